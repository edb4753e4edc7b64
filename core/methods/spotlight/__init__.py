"""The spotlight (d'Eon et al., 2022): contiguous high-loss regions of a representation."""
