"""The graph's nodes, one concern each: prepare, probe, route, small_step, large_step, final_answer."""

from glimp_graph.nodes.common import Router
from glimp_graph.nodes.final import final_answer
from glimp_graph.nodes.prepare import prepare
from glimp_graph.nodes.probe import probe
from glimp_graph.nodes.route import route
from glimp_graph.nodes.step import large_step, small_step

__all__ = ["Router", "final_answer", "large_step", "prepare", "probe", "route", "small_step"]
