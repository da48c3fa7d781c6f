"""Preprocessing before training: local binning, federated WOE/IV, IV selection, the scorecard.

``binning`` (each party, its own columns), ``woe`` (WOE and IV from counts),
``roles`` (the guest's and a host's protocol steps for host columns' event
counts), ``selection`` (IV threshold and top-k), ``transform`` (the WOE
transform a model part carries), ``scorecard`` (points per bin), ``stage``
(one party's whole preprocessing stage of a job).
"""
