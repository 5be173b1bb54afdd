"""Post-commit analysis: trace assembly, failure signals, windows and triggers (docs/analysis.md).

Everything here runs after the store commit, fed by commit events; nothing is on the acknowledgement
path. `trace.TraceSpans` is the view every detector reads; `signals` holds one module per detector.
"""
