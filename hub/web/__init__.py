"""The hub's web side: the HTTP API (``hub.api`` behind FastAPI, OpenAPI at
``/api/openapi.json``) and the dashboard (Jinja2 pages, Chart.js vendored in ``static/vendor``),
served by uvicorn in a thread of ``birdd hub serve``."""
