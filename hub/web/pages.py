"""The dashboard's pages: Jinja2 shells (autoescaped) that the page's script fills from the
JSON API and refreshes every ``refresh_s`` seconds, so a new detection shows without a reload."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from birdd.hub import api

TEMPLATES = Path(__file__).resolve().parent / "templates"


def environment() -> Environment:
    return Environment(
        loader=FileSystemLoader(str(TEMPLATES)),
        autoescape=select_autoescape(["html"], default=True),
    )


def add_pages(app: FastAPI, refresh_s: float) -> None:
    templates = environment()

    def page(name: str, request: Request, **values: Any) -> HTMLResponse:
        day = api.parse_day(None)
        html = templates.get_template(name).render(
            refresh_ms=int(refresh_s * 1000),
            utc_offset_s=day.offset_s,
            today=day.day.isoformat(),
            **values,
        )
        return HTMLResponse(html)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def overview(request: Request) -> HTMLResponse:
        return page("overview.html", request)

    @app.get("/stations/{station}", response_class=HTMLResponse, include_in_schema=False)
    def station(request: Request, station: str, day: str = "") -> HTMLResponse:
        chosen = api.parse_day(day or None)
        return page(
            "station.html",
            request,
            station=station,
            day=chosen.day.isoformat(),
            day_offset_s=chosen.offset_s,
            previous_day=(chosen.day - timedelta(days=1)).isoformat(),
            next_day=(chosen.day + timedelta(days=1)).isoformat(),
        )

    @app.get("/species/{scientific:path}", response_class=HTMLResponse, include_in_schema=False)
    def species(request: Request, scientific: str) -> HTMLResponse:
        return page("species.html", request, scientific=scientific)
