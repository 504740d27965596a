"""HTTP routes of the control plane, one module per concern, each with a module-level ``router``.

``edgegen.fleet.app.ROUTERS`` lists them explicitly, in the order they are included; a new concern
adds its module here and its router there.
"""
