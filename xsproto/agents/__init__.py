"""Layer 3, the programs: the watcher, the device-model side, the image hooks (save,
restore, migrate, inspect-image) and status. Each is a small module over the pure core
(layer 1) and the adapters (layer 2); the command line (layer 4) calls them."""
