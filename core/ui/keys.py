"""One naming scheme for session-state and widget keys: ``<page>.<name>[:<scope>...]``.

``page`` is the page (``app`` for the sidebar, ``detail`` for the image-detail dialog) that owns the value, ``name`` what it
holds, and the optional scopes what it depends on (a workspace key, a subgroup id...), so
two workspaces or two subgroups never share a value by accident.
"""

from __future__ import annotations

from core.methods.records import method_records

# Pages that are not a method's (a method's page is its record's name, core.methods.records).
FIXED_PAGES = ("app", "run", "overview", "findings", "compare", "cohorts", "store", "workshop", "detail")


def pages() -> tuple[str, ...]:
    """Every page a key may belong to: the fixed ones and each registered method's."""
    return FIXED_PAGES + tuple(r.name for r in method_records())


def state_key(page: str, name: str, *scope: object) -> str:
    """The session-state key of ``name`` on ``page``, scoped by ``scope``."""
    if page not in pages():
        raise ValueError(f"Unknown page {page!r} for a session-state key; use one of {pages()}.")  # programming error: a page without a record
    key = f"{page}.{name}"
    return key + "".join(f":{part}" for part in scope)


# The image-details dialog: (origin, store row) asked for, and the request last drawn (read by
# core/ui/image_detail.py, which draws it, and core/ui/workshop.py, whose polling may handle the click).
DETAIL_REQUEST = state_key("detail", "open")
DETAIL_DRAWN = state_key("detail", "drawn")
