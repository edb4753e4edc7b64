"""Forward hooks that record what the activation store keeps of one batch.

``ActivationRecorder`` captures the last-hidden-layer embedding (the input of the
embedding module, or its spatially mean-pooled output) and the per-channel spatial mean
and max of each selected block. core/store/build.py uses it for the store; core/methods use
it to recompute activations of single images.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from core.errors import StoreError
from core.models.loading import LoadedModel


class ActivationRecorder:
    """Forward hooks that capture the embedding and pooled block outputs of one batch."""

    def __init__(self, model: LoadedModel, layers: list[str], want_embedding: bool) -> None:
        modules = dict(model.module.named_modules())
        self.captured: dict[str, torch.Tensor] = {}
        self.handles: list[Any] = []
        if want_embedding and model.embedding_layer:
            module = modules[model.embedding_layer]
            if model.embedding_is_output:
                self.handles.append(module.register_forward_hook(self._embedding_from_output))
            else:
                self.handles.append(module.register_forward_pre_hook(self._embedding_from_input))
        for name in layers:
            if name not in modules:
                raise StoreError(f"Layer '{name}' does not exist in the model.")
            self.handles.append(modules[name].register_forward_hook(self._pool_hook(name)))

    @staticmethod
    def _first_tensor(value: Any) -> torch.Tensor:
        while isinstance(value, (tuple, list)):
            value = value[0]
        return value

    def _embedding_from_input(self, _module: Any, args: Any) -> None:
        self.captured["embedding"] = self._first_tensor(args).flatten(1).float()

    def _embedding_from_output(self, _module: Any, _args: Any, output: Any) -> None:
        out = self._first_tensor(output)
        self.captured["embedding"] = (out.flatten(2).mean(2) if out.dim() > 2 else out).float()

    def _pool_hook(self, name: str) -> Callable[..., None]:
        def hook(_module: Any, _args: Any, output: Any) -> None:
            out = self._first_tensor(output).float()
            flat = out.flatten(2) if out.dim() > 2 else out.unsqueeze(2)
            self.captured[f"{name}.mean"] = flat.mean(2)
            self.captured[f"{name}.max"] = flat.amax(2)

        return hook

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()
