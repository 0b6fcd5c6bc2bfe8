"""Dask arrays: lazy, chunked NumPy on the host; results are computed when copied out."""

from __future__ import annotations

from typing import Any

import array_api_compat

from xplstm.backends._base import Backend


class DaskBackend(Backend):
    name = "dask"
    library = "dask.array"
    install = "pip install 'xplstm[dask]'"
    distribution = "dask"

    def is_array(self, x: Any) -> bool:
        return array_api_compat.is_dask_array(x)

    def namespace(self) -> Any:
        import array_api_compat.dask.array

        return array_api_compat.dask.array

    def persist(self, arrays: list[Any]) -> list[Any]:
        import dask

        return list(dask.persist(*arrays))

    def wait(self, *arrays: Any) -> None:
        # Nothing runs until asked: computing is the work a timing must include.
        import dask

        dask.compute(*arrays)


BACKEND = DaskBackend()
