"""Start the engine worker: ``python /path/to/engines/runtime`` (what birdd.engines.worker runs).

Run as a folder, this file belongs to no package and birdd may not be installed for this
interpreter. So it takes its own folder off ``sys.path`` (its modules are not top-level
modules, and nothing in it may shadow numpy or a runtime), loads the folder as the private
package ``_birdd_runtime`` so that the relative imports inside it work, and runs the worker.
"""

import importlib.util
import os
import sys

PACKAGE = "_birdd_runtime"


def load(name, path, folder=None):
    """Import the file ``path`` as module ``name`` (a package when ``folder`` is given)."""
    locations = [folder] if folder else None
    spec = importlib.util.spec_from_file_location(name, path, submodule_search_locations=locations)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path} as {name}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def run():
    folder = os.path.dirname(os.path.abspath(__file__))
    if sys.path and os.path.abspath(sys.path[0] or os.curdir) == folder:
        del sys.path[0]
    load(PACKAGE, os.path.join(folder, "__init__.py"), folder)
    worker = load(PACKAGE + ".worker_main", os.path.join(folder, "worker_main.py"))
    return worker.main()


if __name__ == "__main__":
    sys.exit(run())
