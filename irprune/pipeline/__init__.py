"""The stages of ``irprune.prune`` (``irprune.api``) around the passes, one module each.

``load`` (the model and its IR), ``reference`` (the original's reference run), ``calibration``
(synthetic calibration data), ``plan`` (importance to allocation), ``rewrite`` (the chosen
rewrite), ``build`` (rewrite, emit and verify one plan; the latency correction) and ``report``
(the report's figures); ``timer`` times them.
"""
