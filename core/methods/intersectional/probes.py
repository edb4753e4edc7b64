"""Linear classifier probes per layer (Krug & Stober, Sec. 4.1 and 5.3; Alain & Bengio).

A probe reads a layer's activations A_l(x), reduced to at most 8x8 per channel and
flattened (core/methods/intersectional/features.py), and predicts the intersectional group G of x with one
linear layer. High validation accuracy means layer l encodes the groups linearly.

The paper's probe: dropout 0.25 on the input, one linear layer to the |G| groups, L1 1e-5
and L2 1e-4 on the weights, Adam with default parameters, 50 epochs, a 90/10 split of up
to 128 images per group. Beyond the paper (which reads one split): the probe is repeated
over ``n_seeds`` stratified splits, each with a shuffled-labels control (the same probe on
permuted training labels), so encoding can be told from overfitting.

Speed: the 2 * n_seeds probes of a layer (real and shuffled) train together as one batched
model: a weight tensor W (M, d, G) updated by one Adam, whose per-element updates are those
of M separate Adams since the summed loss gives each probe its own gradient. Features are
standardised with each split's training mean and deviation; for the per-epoch accuracies
the standardisation is folded into the weights, so the whole set is one matrix product.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from scipy import stats
from sklearn.base import BaseEstimator
from sklearn.model_selection import train_test_split
from sklearn.utils.validation import check_is_fitted

from core.errors import DataError

ProbeProgress = Callable[[int, int, str], None]
STANDARDISED_BYTES = 1 << 30  # keep per-split standardised features in memory up to 1 GiB


def _splits(labels: np.ndarray, val_share: float, seeds: Sequence[int]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified (train, validation) index pairs, one per seed, all of the same sizes."""
    out = []
    for s in seeds:
        train, val = train_test_split(
            np.arange(len(labels)), test_size=val_share, stratify=labels, random_state=int(s)
        )
        out.append((np.sort(train), np.sort(val)))
    return out


def _drop_mask(bits: np.random.Generator, shape: torch.Size, threshold: int) -> torch.Tensor:
    """Bool mask, True (dropped) with probability 1 - threshold / 65536."""
    draws = np.frombuffer(bits.bytes(2 * int(np.prod(shape))), dtype=np.uint16).reshape(tuple(shape))
    return torch.from_numpy(draws >= threshold)


class LinearProbes(BaseEstimator):
    """Linear classifier probes of the groups, one per layer, over several seeds.

    ``fit(features, labels, group_names)``: ``features`` maps layer -> (n, d) reduced
    activations of the same n images, ``labels`` their group index 0..G-1.

    Fitted: ``scores_`` (layer, seed, train_accuracy, val_accuracy, shuffled_val_accuracy:
    after the last epoch), ``curves_`` (layer, seed, epoch, train_accuracy, val_accuracy,
    loss: the mean training cross-entropy of the epoch's minibatches), ``confusions_``
    (layer -> (G, G) counts of true x predicted group over the validation sets of all
    seeds), ``chance_`` (the majority group's share of the validation set, averaged over
    seeds: stricter than 1/G when groups differ in size), ``uniform_chance_`` = 1/G,
    ``layers_``, ``group_names_``, ``group_values_``, ``columns_``, ``n_train_``, ``n_val_``.
    """

    def __init__(
        self,
        epochs: int = 50,
        dropout: float = 0.25,
        l1: float = 1e-5,
        l2: float = 1e-4,
        lr: float = 1e-3,
        val_share: float = 0.1,
        n_seeds: int = 5,
        per_group: int = 128,
        shuffled: bool = True,
        seed: int = 0,
        batch_size: int = 64,
    ) -> None:
        self.epochs = epochs
        self.dropout = dropout
        self.l1 = l1
        self.l2 = l2
        self.lr = lr
        self.val_share = val_share
        self.n_seeds = n_seeds
        self.per_group = per_group
        self.shuffled = shuffled
        self.seed = seed
        self.batch_size = batch_size

    # ------------------------------------------------------------------ validation

    def _check_params(self) -> None:
        if int(self.epochs) < 1:
            raise DataError(f"epochs must be at least 1; got {self.epochs}.")
        if not 0 <= float(self.dropout) < 1:
            raise DataError(f"dropout must lie in [0, 1); got {self.dropout}.")
        if float(self.l1) < 0 or float(self.l2) < 0:
            raise DataError("The L1 and L2 penalties must not be negative.")
        if float(self.lr) <= 0:
            raise DataError(f"The learning rate must be positive; got {self.lr}.")
        if not 0 < float(self.val_share) < 1:
            raise DataError(f"val_share must lie in (0, 1); got {self.val_share}.")
        if int(self.n_seeds) < 1:
            raise DataError(f"n_seeds must be at least 1; got {self.n_seeds}.")
        if int(self.per_group) < 2:
            raise DataError(f"per_group must be at least 2; got {self.per_group}.")
        if int(self.batch_size) < 1:
            raise DataError(f"batch_size must be at least 1; got {self.batch_size}.")

    def _check_data(
        self, features: dict[str, np.ndarray], labels: np.ndarray, group_names: Sequence[str]
    ) -> tuple[np.ndarray, int]:
        if not features:
            raise DataError("Pick at least one layer to probe.")
        labels = np.asarray(labels)
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise DataError("Group labels must be a 1-D array of integer group indices.")
        g = len(group_names)
        if g < 2:
            raise DataError(f"A probe needs at least 2 groups; got {g}.")
        if len(labels) and (labels.min() < 0 or labels.max() >= g):
            raise DataError(f"Group labels must lie in 0..{g - 1} (one per group name).")
        for layer, x in features.items():
            shape = np.shape(x)
            if len(shape) != 2 or shape[0] != len(labels):
                raise DataError(
                    f"Layer '{layer}' has features of shape {shape}; expected ({len(labels)}, d), "
                    "one row per labelled image."
                )
            if shape[1] < 1:
                raise DataError(f"Layer '{layer}' has no features.")
        return labels.astype(np.int64), g

    def _sample(self, labels: np.ndarray, g: int) -> np.ndarray:
        """Rows kept: at most ``per_group`` per group (deterministic for the seed)."""
        keep = []
        for k in range(g):
            rows = np.flatnonzero(labels == k)
            if len(rows) > self.per_group:
                rows = np.sort(np.random.default_rng([int(self.seed), k]).choice(rows, int(self.per_group), replace=False))
            keep.append(rows)
        return np.sort(np.concatenate(keep))

    def _check_split(self, labels: np.ndarray, names: Sequence[str]) -> None:
        counts = np.bincount(labels, minlength=len(names))
        too_few = [f"'{names[k]}' ({counts[k]})" for k in range(len(names)) if counts[k] < 2]
        if too_few:
            shown = ", ".join(too_few[:10]) + (" ..." if len(too_few) > 10 else "")
            raise DataError(
                f"{len(too_few)} group(s) have fewer than 2 images, too few for a stratified "
                f"train/validation split: {shown}. Raise the minimum group size or drop them."
            )
        n, g = len(labels), len(names)
        n_val = int(np.ceil(float(self.val_share) * n))
        if n_val < g or n - n_val < g:
            raise DataError(
                f"{n} images are too few for a stratified {1 - self.val_share:.0%}/{self.val_share:.0%} "
                f"split over {g} groups: the validation set ({n_val}) and the training set "
                f"({n - n_val}) each need at least one image per group. Use fewer groups or more images."
            )

    # ------------------------------------------------------------------ training

    def _train_layer(
        self,
        x_all: np.ndarray,
        y: np.ndarray,
        g: int,
        splits: list[tuple[np.ndarray, np.ndarray]],
        generator: torch.Generator,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Train the S real (and S shuffled) probes of one layer together.

        Returns the real probes' train and val accuracy and loss per epoch (S, E) each, their
        last validation predictions (S, n_val), and the shuffled probes' last val accuracy (S,).

        The gradient of the mean cross-entropy of softmax(z W + b) is written out
        (dL/dlogits = (p - onehot) / B), plus L1 * sign(W) + 2 L2 * W, and handed to Adam:
        the same update as autograd, without its slow batched backward on CPU.
        """
        s = len(splits)
        x = torch.from_numpy(np.ascontiguousarray(x_all, dtype=np.float32))
        n, d = x.shape
        train_idx = torch.from_numpy(np.stack([t for t, _ in splits]))  # (S, n_train)
        val_idx = torch.from_numpy(np.stack([v for _, v in splits]))  # (S, n_val)
        y_t = torch.from_numpy(y)
        y_train = y_t[train_idx]  # (S, n_train)
        y_val = y_t[val_idx]
        source = torch.arange(s)  # which split's standardisation each probe uses
        if self.shuffled:  # the control: the same probes on permuted training labels
            perm = torch.argsort(torch.rand(y_train.shape, generator=generator), dim=1)
            y_train = torch.cat([y_train, torch.gather(y_train, 1, perm)])
            train_idx = torch.cat([train_idx, train_idx])
            val_idx = torch.cat([val_idx, val_idx])
            y_val = torch.cat([y_val, y_val])
            source = torch.cat([source, source])
        m, n_train = train_idx.shape
        # Standardise with each split's training statistics: z = (x - mu) / sd.
        mu = torch.stack([x[t].mean(0) for t in train_idx[:s]])  # (S, d)
        sd = torch.stack([x[t].std(0, unbiased=False) for t in train_idx[:s]])
        inv = torch.where(sd > 1e-12, 1.0 / sd, torch.ones_like(sd))
        # Standardised copies per split when they fit in memory: one gather per step then.
        z_all = None
        if s * n * d * 4 <= STANDARDISED_BYTES:
            z_all = ((x[None] - mu[:, None, :]) * inv[:, None, :]).reshape(s * n, d)
        mu_m, inv_m = mu[source], inv[source]  # (M, d)
        flat_idx = train_idx + (source * n)[:, None]  # rows of z_all
        # nn.Linear's default initialisation, U(-1/sqrt(d), 1/sqrt(d)), seeded.
        bound = 1.0 / np.sqrt(d)
        w = (torch.rand((m, d, g), generator=generator) * 2 - 1) * bound
        b = (torch.rand((m, 1, g), generator=generator) * 2 - 1) * bound
        # Default betas (0.9, 0.999); fused: one kernel per step instead of a dozen passes
        # over W (the step took a fifth of the training time).
        optimiser = torch.optim.Adam([w, b], lr=float(self.lr), fused=True)
        keep = 1.0 - float(self.dropout)
        # Dropout masks from numpy's PCG64 (16 random bits per entry): torch's CPU
        # generator draws one float at a time and would dominate the training time.
        bits = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))
        threshold = int(round(keep * 65536))
        l1, l2 = float(self.l1), float(self.l2)
        bs = min(int(self.batch_size), n_train)
        epochs = int(self.epochs)
        train_acc = np.zeros((m, epochs))
        val_acc = np.zeros((m, epochs))
        losses = np.zeros((m, epochs))
        arange_m = torch.arange(m)[:, None]
        val_pred = torch.zeros((m, val_idx.shape[1]), dtype=torch.int64)
        for epoch in range(epochs):
            pos = torch.argsort(torch.rand((m, n_train), generator=generator), dim=1)  # each probe's order
            order = torch.gather(flat_idx if z_all is not None else train_idx, 1, pos)
            labels_order = torch.gather(y_train, 1, pos)
            epoch_loss = torch.zeros(m, dtype=torch.float64)
            steps = 0
            for start in range(0, n_train, bs):
                rows = order[:, start : start + bs]  # (M, B)
                target = labels_order[:, start : start + bs, None]  # (M, B, 1)
                if z_all is not None:
                    z = z_all.index_select(0, rows.reshape(-1)).view(*rows.shape, d)  # (M, B, d), standardised
                else:
                    z = x[rows].sub_(mu_m[:, None, :]).mul_(inv_m[:, None, :])
                if keep < 1.0:  # dropout 0.25: zero a random quarter, scale the rest by 1/0.75
                    z.masked_fill_(_drop_mask(bits, z.shape, threshold), 0.0)
                logits = torch.baddbmm(b, z, w, alpha=1.0 / keep)  # (M, B, G)
                log_p = torch.log_softmax(logits, dim=2)
                epoch_loss += -torch.gather(log_p, 2, target).mean((1, 2)).double()
                grad = log_p.exp_()
                grad.masked_fill_(grad < 1e-30, 0.0)  # no subnormals: they make CPU matmuls crawl
                grad.scatter_add_(2, target, torch.full(target.shape, -1.0))
                grad.div_(rows.shape[1])  # d mean CE / d logits = (p - onehot) / B
                grad_w = torch.bmm(z.transpose(1, 2), grad).mul_(1.0 / keep)  # (M, d, G)
                if l1:
                    grad_w.add_(torch.sign(w), alpha=l1)  # d L1 |W|_1
                if l2:
                    grad_w.add_(w, alpha=2.0 * l2)  # d L2 |W|^2
                w.grad, b.grad = grad_w, grad.sum(1, keepdim=True)
                optimiser.step()
                steps += 1
            losses[:, epoch] = (epoch_loss / steps).numpy()
            # Accuracies without dropout, standardisation folded into the weights:
            # ((x - mu) * inv) W + b = x (inv W) + (b - (mu * inv) W).
            w_eff = w * inv_m[:, :, None]  # (M, d, G)
            b_eff = b[:, 0, :] - torch.einsum("md,mdg->mg", mu_m * inv_m, w)  # (M, G)
            all_logits = (x @ w_eff.permute(1, 0, 2).reshape(d, m * g)).view(n, m, g) + b_eff[None]
            pred = all_logits.argmax(2).T  # (M, n)
            train_acc[:, epoch] = (pred[arange_m, train_idx] == y_train).double().mean(1).numpy()
            val_pred = pred[arange_m, val_idx]
            val_acc[:, epoch] = (val_pred == y_val).double().mean(1).numpy()
        shuffled_val = val_acc[s:, -1] if m > s else np.full(s, np.nan)
        return train_acc[:s], val_acc[:s], losses[:s], val_pred[:s].numpy(), shuffled_val

    def fit(
        self,
        features: dict[str, np.ndarray],
        labels: np.ndarray,
        group_names: Sequence[str],
        progress: ProbeProgress | None = None,
        group_values: Sequence[Sequence[str]] | None = None,
        columns: Sequence[str] | None = None,
    ) -> LinearProbes:
        """Train the probes of every layer in ``features`` (in its order) over the seeds."""
        self._check_params()
        labels, g = self._check_data(features, labels, group_names)
        names = [str(x) for x in group_names]
        if group_values is not None:
            group_values = [tuple(str(v) for v in vals) for vals in group_values]
            if len(group_values) != g or (columns is not None and any(len(v) != len(columns) for v in group_values)):
                raise DataError("group_values needs one value per column for every group.")
        keep = self._sample(labels, g)
        y = labels[keep]
        self._check_split(y, names)
        seeds = [int(self.seed) + i for i in range(int(self.n_seeds))]
        splits = _splits(y, float(self.val_share), seeds)
        layers = list(features)
        score_rows, curve_rows = [], []
        confusions: dict[str, np.ndarray] = {}
        chance = float(np.mean([np.bincount(y[v], minlength=g).max() / len(v) for _, v in splits]))
        for i, layer in enumerate(layers):
            if progress:
                progress(i, len(layers), f"Training probes on {layer}")
            x = np.asarray(features[layer])[keep]
            if not np.isfinite(x).all():
                raise DataError(
                    f"Layer '{layer}' has NaN or infinite activations for "
                    f"{int((~np.isfinite(x)).any(axis=1).sum())} image(s); probes cannot use it."
                )
            generator = torch.Generator().manual_seed(int(self.seed) * 1000 + i)
            train_acc, val_acc, losses, val_pred, shuffled_val = self._train_layer(x, y, g, splits, generator)
            confusion = np.zeros((g, g), dtype=np.int64)
            for k, (_, v) in enumerate(splits):
                np.add.at(confusion, (y[v], val_pred[k]), 1)
            confusions[layer] = confusion
            for k, s in enumerate(seeds):
                score_rows.append((layer, s, train_acc[k, -1], val_acc[k, -1], shuffled_val[k]))
                for e in range(int(self.epochs)):
                    curve_rows.append((layer, s, e + 1, train_acc[k, e], val_acc[k, e], losses[k, e]))
        if progress:
            progress(len(layers), len(layers), "Probes trained")
        self.layers_ = layers
        self.group_names_ = names
        self.group_values_ = None if group_values is None else list(group_values)
        self.columns_ = None if columns is None else [str(c) for c in columns]
        self.n_train_ = len(splits[0][0])
        self.n_val_ = len(splits[0][1])
        self.seeds_ = seeds
        self.scores_ = pd.DataFrame(
            score_rows, columns=["layer", "seed", "train_accuracy", "val_accuracy", "shuffled_val_accuracy"]
        )
        self.curves_ = pd.DataFrame(
            curve_rows, columns=["layer", "seed", "epoch", "train_accuracy", "val_accuracy", "loss"]
        )
        self.confusions_ = confusions
        self.chance_ = chance
        self.uniform_chance_ = 1.0 / g
        return self

    # ------------------------------------------------------------------ readers

    def summary(self) -> pd.DataFrame:
        """Per layer, in the fitted order: mean validation accuracy over the seeds with a 95%
        t-interval (mean +- t(0.975, S-1) * sd / sqrt(S); NaN for one seed), mean training
        accuracy, mean shuffled-control validation accuracy and the chance level."""
        check_is_fitted(self, "scores_")
        rows = []
        for layer in self.layers_:
            part = self.scores_[self.scores_["layer"] == layer]
            val = part["val_accuracy"].to_numpy(dtype=float)
            mean = float(val.mean())
            if len(val) > 1:
                half = float(stats.t.ppf(0.975, len(val) - 1) * val.std(ddof=1) / np.sqrt(len(val)))
            else:
                half = float("nan")
            rows.append(
                {
                    "layer": layer,
                    "val_accuracy": mean,
                    "val_low": max(0.0, mean - half) if np.isfinite(half) else np.nan,
                    "val_high": min(1.0, mean + half) if np.isfinite(half) else np.nan,
                    "train_accuracy": float(part["train_accuracy"].mean()),
                    "shuffled_val_accuracy": float(part["shuffled_val_accuracy"].mean()),
                    "chance": self.chance_,
                    "margin": mean - self.chance_,
                }
            )
        return pd.DataFrame(rows)

    def errors(self, layer: str, top: int = 10) -> pd.DataFrame:
        """The most frequent validation errors of ``layer`` (the paper's Table 1), over all seeds.

        Columns: true, predicted, count, error_rate (count / the true group's validation
        total), differs (the columns whose values differ between the two groups, joined
        with ", "; empty without group values).
        """
        check_is_fitted(self, "confusions_")
        if layer not in self.confusions_:
            raise DataError(f"No probe was trained on layer '{layer}'; trained: {', '.join(self.layers_)}.")
        confusion = self.confusions_[layer]
        totals = confusion.sum(axis=1)
        true_idx, pred_idx = np.nonzero(confusion * (1 - np.eye(len(confusion), dtype=np.int64)))
        counts = confusion[true_idx, pred_idx]
        rates = counts / np.maximum(totals[true_idx], 1)
        order = np.lexsort((pred_idx, true_idx, -rates, -counts))[: max(int(top), 0)]
        rows = []
        for k in order:
            t, p = int(true_idx[k]), int(pred_idx[k])
            differs = ""
            if self.group_values_ is not None:
                cols = self.columns_ or [f"variable {c + 1}" for c in range(len(self.group_values_[t]))]
                differs = ", ".join(
                    c for c, a, b in zip(cols, self.group_values_[t], self.group_values_[p], strict=True) if a != b
                )
            rows.append(
                {
                    "true": self.group_names_[t],
                    "predicted": self.group_names_[p],
                    "count": int(counts[k]),
                    "error_rate": float(rates[k]),
                    "differs": differs,
                }
            )
        return pd.DataFrame(rows, columns=["true", "predicted", "count", "error_rate", "differs"])
