"""edgecls: a folder of labelled images in, a small evaluated deployable classifier out.

The Python API (edgecls/api.py holds every command as a function): `train`, `resume`, `load`,
`check_data`, `audit`, the `Run` and `Model` they return, and `EdgeclsError`, the one exception
type for problems with the input.
"""

__version__ = "0.1.0"

_API = (
    "train", "resume", "load", "check_data", "audit", "Run", "Model", "DataCheck", "Audit",
    "EdgeclsError",
)  # fmt: skip


def __getattr__(name: str):
    """The API on first use, so that `import edgecls` (and the CLI) stays light."""
    if name in _API:
        from edgecls import api

        return getattr(api, name)
    raise AttributeError(f"module 'edgecls' has no attribute {name!r}")


__all__ = [*_API, "__version__"]
