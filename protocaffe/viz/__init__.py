"""Pictures of a compiled net: `draw` (Graphviz DOT, SVG, PNG) and `view` (one HTML page).

`model.draw_model(graph)` folds in-place layers onto their producers and attaches key
parameters, Crop alignment and diagnostics to the nodes; `dot.net_dot` writes it as DOT and
`dot.render` runs Graphviz's `dot` for the layout; `html.view_page` embeds that SVG in a
self-contained page.
"""
