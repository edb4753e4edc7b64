"""Filter saliency (Levin et al., 2022): the filter index, per-image saliency and its checks, the stored dataset profiles, failure modes."""
