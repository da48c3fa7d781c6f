"""A training's identity (``model_id``): sent when a training starts, compared before parts are combined.

Every party saves its own model part, hosts before the guest, so a crash between the saves (or a part
copied from another run) can leave parts of two trainings side by side; combined, they score wrongly
without an error. So the guest draws a ``model_id`` when a training starts (128 random bits, kept beside
its checkpoint so that a resumed training keeps it) and sends it to every host (``<pre>/model_id``,
``sbt/model_id``); every party stores it in its part (:mod:`vfl.models.model_file`). ``vfl predict``
exchanges the parts' ids before anything is scored (``predict/model_id``) and every party stops if they
differ; ``vfl serve`` compares them when a link is set up (:mod:`vfl.serving.roles`). The id is a
random number: it tells a party nothing but which training a part came from (docs/protocols.md,
section 3, "Parts of one training").
"""
from __future__ import annotations

import json
import logging

from ..io.files import write_json
from ..models.checkpoint import Checkpoint
from ..models.model_file import check_same_training, new_model_id
from ..protocol.channel import Channel
from ..protocol.spec import is_model_id, model_id_of
from .config import JobConfig

log = logging.getLogger("vfl.job")
MODEL_ID_FILE = "training_id.json"       # the guest's, beside its checkpoint: the model_id of that training
PREDICT_STEP = "predict/model_id"


def training_model_id(checkpoint: Checkpoint, resume: bool) -> str:
    """The guest's model_id for this training: the one kept beside its checkpoint when it resumes from
    one (a resumed training is the same training: parts a crash left behind match those it saves now),
    else a fresh one, written there before training starts (so before any checkpoint of the training)."""
    path = checkpoint.path.with_name(MODEL_ID_FILE)
    if resume and checkpoint.path.is_file():
        try:
            kept = json.loads(path.read_text(encoding="utf-8")).get("model_id")
        except (OSError, ValueError, AttributeError):
            kept = None
        if is_model_id(kept):
            return kept
        log.info("resuming a training whose model_id was not kept (%s): every part gets a new one", path.name)
    model_id = new_model_id()
    write_json(path, {"model_id": model_id})
    return model_id


def send_model_id(job: JobConfig, channel: Channel, prefix: str, model_id: str) -> None:
    """The guest tells every host the training's model_id (``<pre>/model_id``, ``sbt/model_id``)."""
    for h in job.host_names:
        channel.send(h, f"{prefix}/model_id", {"model_id": model_id})


def receive_model_id(job: JobConfig, channel: Channel, prefix: str) -> str:
    """A host's receipt of the training's model_id from the guest (checked: 32 hex digits)."""
    step = f"{prefix}/model_id"
    return model_id_of(channel.recv(job.guest.name, step), step, peer=job.guest.name)


def guest_checks_parts(job: JobConfig, channel: Channel, model_id: str | None) -> None:
    """Before anything is scored: the guest sends every host its part's model_id, receives theirs, and
    stops (:class:`~vfl.models.model_file.OtherTraining`, naming the parties) if they differ (hosts of
    different trainings; a host whose part differs from the guest's has stopped already, naming itself)."""
    for h in job.host_names:
        channel.send(h, PREDICT_STEP, {"model_id": model_id})
    theirs = {h: model_id_of(channel.recv(h, PREDICT_STEP), PREDICT_STEP, unknown=True, peer=h)
              for h in job.host_names}
    check_same_training({job.guest.name: model_id, **theirs}, job.guest.name)


def host_checks_parts(job: JobConfig, name: str, channel: Channel, model_id: str | None) -> None:
    """A host's side of :func:`guest_checks_parts`: it stops (naming itself and the guest) if the guest's
    part is of another training than its own, else answers with its own part's model_id. It stops before
    answering: a message sent and then abandoned by a party that fails on its own would be one its
    ledger cannot show the run failed after (``vfl audit`` requires that), and the guest stops anyway."""
    guest = job.guest.name
    guest_id = model_id_of(channel.recv(guest, PREDICT_STEP), PREDICT_STEP, unknown=True, peer=guest)
    check_same_training({guest: guest_id, name: model_id}, name)
    channel.send(guest, PREDICT_STEP, {"model_id": model_id})
