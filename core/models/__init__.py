"""Model kinds (torchvision state_dicts, entry points, TorchScript), loading and preprocessing, and the layers a store keeps."""
