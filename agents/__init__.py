"""The three parts that run: the device-model agent, the toolstack watcher, the image hooks."""
