"""Dataset kinds (image folders, CSV manifests, CelebA), image reading, and the sources that build a dataset from a workspace's spec."""
