"""Intersectional groups and their probes and NAPs (Krug & Stober): the groups, the probes' reduced activations, the probes, NAPs and topographic maps."""
