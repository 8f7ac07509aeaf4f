"""botocore's service models, read once per test process instead of once per
boto3 session. Imported into tests/conftest.py.

Every test that talks to moto makes a new `boto3.Session`, and botocore's
loader caches what it read per session only: each test parsed the EC2, S3,
SSM, CloudFormation … JSON models again (test_stack_deploy.py: 690 JSON
files, 3 s of its 8 s of CPU). The loader's own cache already hands one
loaded model to every client of a session, so handing it to every session
of the process is the same sharing, one level up.
"""

from __future__ import annotations

from typing import Any

from botocore.loaders import Loader

_loaded: dict[tuple[Any, ...], Any] = {}


def _shared(name: str) -> None:
    per_session = getattr(Loader, name)

    def load(self: Loader, *args: Any, **kwargs: Any) -> Any:
        key = (name, tuple(self.search_paths), args, tuple(sorted(kwargs.items())))
        if key not in _loaded:
            _loaded[key] = per_session(self, *args, **kwargs)
        return _loaded[key]

    load.__doc__ = per_session.__doc__
    setattr(Loader, name, load)


for _method in ("load_service_model", "load_data_with_path", "list_api_versions",
                "determine_latest_version", "list_available_services"):
    _shared(_method)
