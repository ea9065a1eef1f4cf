"""Layer 2, the adapters: each is the only module that imports its library (pyxs, Xen's
``xen.lowlevel.xc``, the ``xl`` process), and turns that library's failures into
xsproto's error types."""
