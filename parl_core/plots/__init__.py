"""Plotly figure builders: arrays in, `plotly.graph_objects.Figure` out; never shown,
never trained (DESIGN §2). One submodule per view; public names re-exported here."""
from .training import *  # noqa: F401,F403
from .analysis import *  # noqa: F401,F403
from .images import *  # noqa: F401,F403
from .playground import *  # noqa: F401,F403
