"""``PageContext``: the chosen workspace and what has been loaded for it, as every view takes it.

``page_context()`` (core/ui/context.py, which re-exports the class) builds it for a page and
draws the sidebar; the class lives here, below the workshop furniture that also builds one
(core/ui/workshop.py), so neither imports the other.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import pandas as pd

from core.data.datasets import ImageDataset
from core.models.loading import LoadedModel
from core.services.subsets import SubsetRegistry
from core.services.workspace import Workspace
from core.store.read import Store
from core.ui import cache, visitor
from core.ui.listing import workshop_on


@dataclass
class PageContext:
    """The chosen workspace and what has been loaded for it."""

    workspace: Workspace
    hosted: bool
    model: LoadedModel
    dataset: ImageDataset
    store: Store | None
    _registry: SubsetRegistry | None = field(default=None, init=False, repr=False)

    @property
    def key(self) -> str:
        return self.workspace.key()

    def meta(self) -> pd.DataFrame:
        assert self.store is not None
        return cache.meta_for(self.store)

    def run_model(self) -> AbstractContextManager[LoadedModel]:
        """A private copy of the model for one run (``with ctx.run_model() as model:``).

        Every run that executes the model uses one: runs swap its weights
        (torch.func.functional_call) or hook its modules while they go, so the shared
        ``self.model`` is only read (its layers, sizes, filter shapes), never run."""
        return cache.private_model(self.workspace, self.hosted, self.model)

    def subsets(self) -> SubsetRegistry:
        """The workspace's saved subsets: in the store's folder (``subsets.json``, shared by
        every session and kept across restarts), or in this visitor's own record on the server
        when hosted, in workshop mode (each student's own, kept across reloads, cleared by the
        instructor's reset) or before the store exists (core/ui/visitor.py).

        One registry per page run: it reads its storage once, so a subset listed by one part
        of the page is still there when another part fetches it, whatever other sessions or
        processes write meanwhile; its own saves show at once."""
        if self._registry is None:
            if self.hosted or self.store is None or workshop_on():
                self._registry = SubsetRegistry(visitor.VisitorStorage(visitor.record(), self.key))
            else:
                self._registry = SubsetRegistry.in_folder(self.store.path, n=self.store.n)
        return self._registry
