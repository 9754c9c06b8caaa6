"""``python -m glimp_graph.cli``: the ``glimp`` command."""

from glimp_graph.cli import main

main()
