"""Online scoring (``vfl serve``): what each party computes to score one applicant, or a batch, while
they wait.

* :mod:`.stores`: each party looks up its own features by ID (a file indexed at start, or an SQL
  database through SQLAlchemy), with training's treatment of missing and invalid values;
* :mod:`.roles`: the host's answer (its partial scores as a masked share of the secure sum) and the
  guest's (probability, points, reason codes), validated message by message;
* :mod:`.trees`: the same for SecureBoost (the hosts answer their splits' sides);
  :mod:`.scorers` picks by model family;
* :mod:`.reasons`: reason codes from the guest's own columns;
* :mod:`.audit`: each party's log of the requests it answered (keyed ID hashes; it fails closed);
  :mod:`.answered`: the IDs a host answered with its own score, which it never averages later.

How bytes move (the guest's HTTP API, the TLS links to the hosts) is in ``parties/serve*.py``;
what each party learns per request is in docs/protocols.md ("Online scoring").
"""
