"""Quality evaluation: objective metrics, the Opus anchor, reports and a listening page.

``spectrostream eval`` (:mod:`.cli`) runs :func:`.runner.evaluate` and writes the outputs with
:func:`.report.write_all`. Heavy dependencies (ViSQOL, matplotlib, torch) load only when used.
"""
