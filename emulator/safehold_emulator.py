#!/usr/bin/env python3
"""Safehold's local AWS emulator: moto (pinned ``moto[server]==5.2.5``) in
server mode, plus a small patch layer that closes the gaps between moto and the
AWS behaviour Safehold depends on.

Run::

    python3 emulator/safehold_emulator.py --host 127.0.0.1 --port 5000 \
        [--pending-polls N] [--seed S] [--log-requests]

When the socket is bound it prints one line, ``ready http://HOST:PORT``, to
stdout (``--port 0`` picks a free port and prints it). Request logging is off
unless ``--log-requests`` is given, so a parent that pipes stderr and never
reads it cannot block the server. ``MOTO_EC2_LOAD_DEFAULT_AMIS`` is forced to
``false`` before moto is imported, so no account starts with the ~1,300
snapshots of moto's bundled public AMIs.

Control endpoints (not AWS; JSON in, JSON out):

* ``POST /_safehold/faults`` adds a fault rule, ``GET`` lists the rules with
  how often each fired, ``DELETE`` removes them all.
* ``GET /_safehold/calls`` answers ``{"calls": {action: count},
  "by_access_key": {access key id: {action: count}}}``, every request that
  reached the emulator per API action (faulted ones and retries included),
  also split by the access key that signed it; ``DELETE`` resets the counts.
* ``GET /_safehold/config`` shows and ``POST /_safehold/config`` changes the
  runtime settings ``{"pending_polls": N, "rejected_access_keys": [...],
  "root_access_keys": [...]}``. A POST sets the fields it names and keeps
  the others (a key list replaces the previous one; ``[]`` empties it); an
  unknown or invalid field rejects the whole POST with 400.

Patches, each modelling documented AWS behaviour:

a. ``FaultInjector`` (WSGI middleware): injects the failures every AWS client
   must survive. A rule ``{"action", "kind", "probability", "count",
   "delay_ms"}`` matches the API action (query protocol ``Action=`` in the
   query string or form body, or the JSON protocol ``X-Amz-Target`` header;
   ``"*"`` matches any action). Kinds:
   ``throttle`` answers HTTP 400 with the service's throttling error: EC2
   ``<Response><Errors><Error><Code>RequestLimitExceeded``; other query/XML
   services (RDS, Redshift, STS, SNS) ``<ErrorResponse><Error><Type>Sender
   </Type><Code>Throttling``; JSON services (DynamoDB)
   ``{"__type": "com.amazonaws.dynamodb.v20120810#ThrottlingException"}``.
   ``server_error`` answers HTTP 500 in the same formats with EC2's
   ``InternalError``, the query services' ``InternalFailure`` and DynamoDB's
   ``InternalServerError``. ``latency`` sleeps ``delay_ms`` and passes the
   request on. The first rule that matches, has firings left (``count``;
   ``null`` is unlimited) and wins its ``probability`` roll (seedable RNG,
   ``--seed``) decides.
b. ``patch_snapshots_pending_for_polls``: EBS snapshots are created in state
   ``pending`` and reach ``completed`` asynchronously, so callers poll
   DescribeSnapshots. Snapshots made by CreateSnapshot, CreateSnapshots and
   CopySnapshot report ``State=pending`` and a ``Progress`` below 100% in the
   first N DescribeSnapshots calls that return them, then ``completed`` and
   ``100%``. N is ``--pending-polls`` (default 0: moto's immediate completion)
   or set at runtime; a snapshot keeps the N in force when it was created.
   A ``status`` filter is applied after the poll is counted, so waiting with
   ``Filters=[status=completed]`` terminates. CreateSnapshots' answer carries
   each snapshot's State (moto leaves it out).
c. ``patch_shared_snapshots``: DescribeSnapshots returns "public snapshots,
   private snapshots that you own, and private snapshots owned by other
   accounts for which you have explicit create volume permissions". After
   ModifySnapshotAttribute grants createVolumePermission to account B, B
   sees the snapshot (by ``SnapshotIds``, by ``RestorableByUserIds``, by
   ``OwnerIds`` or the ``owner-id`` filter of the sharer, and unfiltered) and
   can CopySnapshot it, also from another ``SourceRegion``; the copy is owned
   by B. A snapshot that is not shared stays ``InvalidSnapshot.NotFound``
   for B. ``OwnerIds`` (account ids, ``self``, ``amazon``) and
   ``RestorableByUserIds`` (account ids, ``self``, ``all``), which moto
   ignores, are honoured.
d. ``patch_register_image_block_device_mappings``: RegisterImage with
   ``BlockDeviceMappings`` creates an AMI backed by the given snapshots: each
   EBS mapping appears in DescribeImages with its SnapshotId and VolumeSize
   (default: the snapshot's size), DeleteOnTermination (default true),
   VolumeType (default gp2) and the snapshot's encryption; ``RootDeviceName``
   is kept. A snapshot backing a registered AMI cannot be deleted
   (``InvalidSnapshot.InUse``) until the AMI is deregistered.
e. ``patch_create_image_snapshots_volumes``: CreateImage "creates a snapshot
   of each EBS volume attached to the instance": one snapshot per attached
   volume, described ``Created by CreateImage(i-...) for ami-... from
   vol-...``, listed in the AMI's BlockDeviceMappings under the volume's
   device name with its size and type, and tagged with the ``snapshot``
   TagSpecifications of the request (moto rejects those).
f. ``patch_copy_image_copies_snapshots``: CopyImage copies every snapshot
   backing the source AMI into the destination region, so the copy's
   BlockDeviceMappings name the same devices and sizes with new snapshot ids
   (needed for AMIs shaped by patches d and e).
g. ``rejected_access_key_error`` (WSGI middleware, before fault rules): a
   request signed with an unknown or deactivated access key fails
   authentication. When the access key id of the SigV4 credential
   (``Credential=AKID/date/region/service/aws4_request`` in the
   ``Authorization`` header, or a presigned URL's ``X-Amz-Credential``) is in
   ``rejected_access_keys``, the request is answered as AWS answers it:
   query/XML services (STS, RDS, Redshift, SNS) HTTP 403 ``<ErrorResponse>
   <Error><Type>Sender</Type><Code>InvalidClientTokenId`` "The security
   token included in the request is invalid."; EC2 HTTP 401
   ``<Response><Errors><Error><Code>AuthFailure`` "AWS was not able to
   validate the provided access credentials"; DynamoDB HTTP 400
   ``{"__type": "com.amazonaws.dynamodb.v20120810#UnrecognizedClientException"}``
   with the security-token message; S3 HTTP 403 ``InvalidAccessKeyId``.
h. ``patch_root_access_keys``: GetCallerIdentity called with an access key
   of an account's root user returns ``Arn`` ``arn:aws:iam::<account>:root``
   and ``UserId`` ``<account>``. Keys in ``root_access_keys`` (20-character
   ids, as moto reads only those from a signature) are root keys of the
   account moto assigns them (123456789012 for unknown keys); every other
   call with them is unaffected.
i. ``patch_shared_db_snapshots``: a manual RDS DB snapshot or Aurora DB
   cluster snapshot whose ``restore`` attribute (ModifyDBSnapshotAttribute,
   ModifyDBClusterSnapshotAttribute) lists account B can be copied and
   restored by B. B's DescribeDBSnapshots / DescribeDBClusterSnapshots list
   it with ``IncludeShared=true`` or ``SnapshotType=shared``; ``restore=all``
   (public) ones with ``IncludePublic=true`` or ``SnapshotType=public``.
   ``IncludeShared``/``IncludePublic`` do not apply to ``SnapshotType``
   ``manual`` or ``automated``. Such a snapshot is identified by its ARN
   (``DBSnapshotIdentifier``/``DBClusterSnapshotIdentifier`` in the answer
   and in the request) and shows no tags (they are the owner's). B's
   CopyDBSnapshot / CopyDBClusterSnapshot accept its ARN as the source, in
   its region or from another one (the ARN names the source region), and
   make a snapshot owned by B in B's region. Unshared, after B is removed
   from the attribute, or not manual, it is ``DBSnapshotNotFound`` /
   ``DBClusterSnapshotNotFoundFault`` for B, and never listed. Requests
   without those parameters, and moto's own lookups, are unchanged.
j. ``patch_run_instances_image_mappings``: RunInstances launches each
   instance with "the block device mappings of the AMI, plus those of the
   request": one volume per EBS mapping of the AMI (patch d), from its
   snapshot, size, type and DeleteOnTermination, at its device; a request
   mapping for the same device overrides the AMI's fields (``NoDevice``
   drops it), other request mappings are added. ``Iops`` of a mapping is
   honoured (moto drops it, so ``io1``/``io2`` mappings fail), the
   ``volume`` TagSpecifications tag every such volume, and
   ``DisableApiTermination`` is kept (DescribeInstanceAttribute
   ``disableApiTermination``). Launches from AMIs without explicit mappings
   and without request mappings keep moto's default root volume.
k. ``patch_create_volume_from_shared_snapshot``: createVolumePermission lets
   the grantee "create a volume from the snapshot": CreateVolume in account
   B (and volumes RunInstances makes in B) accept a snapshot of another
   account that shares it with B (patch c), with the snapshot's size when
   none is given and its encryption; the volume names it as SnapshotId.
   Unshared, it stays ``InvalidSnapshot.NotFound``.
l. ``patch_register_image_architecture_and_tags``: RegisterImage keeps
   ``Architecture`` (default ``x86_64``) and applies the ``image``
   TagSpecifications of the request (moto ignores both).

Known remaining difference: the grantee of a shared EBS snapshot also sees
the owner's tags on it (AWS shows tags to the owner only).
"""

import argparse
import inspect
import io
import json
import logging
import os
import random
import re
import signal
import sys
import threading
import time
import uuid
from urllib.parse import parse_qs

os.environ["MOTO_EC2_LOAD_DEFAULT_AMIS"] = "false"

from werkzeug.serving import make_server  # noqa: E402

from moto.core.responses import ActionResult  # noqa: E402
from moto.ec2.exceptions import EC2ClientError  # noqa: E402
from moto.ec2.models import ec2_backends  # noqa: E402
from moto.ec2.models.amis import Ami, AmiBackend  # noqa: E402
from moto.ec2.models.elastic_block_store import EBSBackend, Snapshot  # noqa: E402
from moto.ec2.models.instances import InstanceBackend  # noqa: E402
from moto.ec2.responses.amis import AmisResponse  # noqa: E402
from moto.ec2.responses.elastic_block_store import ElasticBlockStore  # noqa: E402
from moto.ec2.responses.instances import InstanceResponse  # noqa: E402
from moto.ec2.utils import generic_filter, random_snapshot_id  # noqa: E402
from moto.moto_server.werkzeug_app import (  # noqa: E402
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from moto.rds.exceptions import DBClusterSnapshotNotFoundError, DBSnapshotNotFoundFault  # noqa: E402
from moto.rds.models import DBClusterSnapshot, DBSnapshot, RDSBackend, rds_backends  # noqa: E402
from moto.rds.responses import RDSResponse  # noqa: E402
from moto.rds.utils import split_arn  # noqa: E402
from moto.sts.models import STSBackend  # noqa: E402
from moto.utilities.utils import get_partition  # noqa: E402

FAULT_KINDS = ("throttle", "server_error", "latency")
ACCESS_KEY_ID = re.compile(r"[A-Z0-9]{20}")


class Settings:
    """Runtime settings changed through ``/_safehold/config``."""

    FIELDS = ("pending_polls", "rejected_access_keys", "root_access_keys")

    def __init__(self, pending_polls):
        self.pending_polls = pending_polls
        self.rejected_access_keys = ()
        self.root_access_keys = ()

    def as_dict(self):
        return {
            "pending_polls": self.pending_polls,
            "rejected_access_keys": list(self.rejected_access_keys),
            "root_access_keys": list(self.root_access_keys),
        }

    def update(self, changes):
        """Apply the fields present in ``changes`` and keep the others; every
        field is validated before any is applied (``ValueError`` if one is
        bad). A key list replaces the previous list (``[]`` empties it)."""
        if not isinstance(changes, dict) or not changes:
            raise ValueError(f"expected a JSON object with some of {', '.join(self.FIELDS)}")
        unknown = sorted(set(changes) - set(self.FIELDS))
        if unknown:
            raise ValueError(f"unknown setting(s) {', '.join(unknown)}")
        parsed = {}
        if "pending_polls" in changes:
            try:
                polls = int(changes["pending_polls"])
            except (ValueError, TypeError) as error:
                raise ValueError(f"bad pending_polls: {error}") from None
            if polls < 0:
                raise ValueError("bad pending_polls: pending_polls must be non-negative")
            parsed["pending_polls"] = polls
        for field in ("rejected_access_keys", "root_access_keys"):
            if field in changes:
                keys = changes[field]
                if not isinstance(keys, list) or not all(isinstance(k, str) and k for k in keys):
                    raise ValueError(f"bad {field}: expected a list of access key ids")
                if field == "root_access_keys" and not all(ACCESS_KEY_ID.fullmatch(k) for k in keys):
                    # moto's STS only reads AWS-shaped key ids from the signature.
                    raise ValueError("bad root_access_keys: access key ids are 20 characters A-Z, 0-9")
                parsed[field] = tuple(dict.fromkeys(keys))
        for field, value in parsed.items():
            setattr(self, field, value)


# --------------------------------------------------------------------------
# a. fault injection
# --------------------------------------------------------------------------


def _json_response(start_response, status, payload):
    body = json.dumps(payload).encode()
    start_response(
        status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    return [body]


def _read_json(environ):
    length = int(environ.get("CONTENT_LENGTH") or 0)
    raw = environ["wsgi.input"].read(length) if length else b""
    return json.loads(raw or b"{}")


def _signing_credential(environ):
    """The (access key id, service) of the request's SigV4 credential scope
    ``Credential=AKID/date/region/service/aws4_request`` (``Authorization``
    header, else a presigned URL's ``X-Amz-Credential``), or (None, None)."""
    authorization = environ.get("HTTP_AUTHORIZATION", "")
    scope = None
    if "Credential=" in authorization:
        scope = authorization.split("Credential=", 1)[1].split(",", 1)[0].strip()
    else:
        presigned = parse_qs(environ.get("QUERY_STRING", "")).get("X-Amz-Credential")
        scope = presigned[0] if presigned else None
    if not scope:
        return None, None
    parts = scope.split("/")
    return parts[0] or None, parts[3] if len(parts) == 5 else None


def _protocol_of(environ, target):
    """The protocol an error answer must use: ``dynamodb`` or ``json``
    (``X-Amz-Target``), ``ec2`` (EC2's query dialect), ``s3`` (REST-XML) or
    ``query`` (RDS, Redshift, STS, SNS, ...)."""
    if target:
        return "dynamodb" if target.startswith("DynamoDB_") else "json"
    service = _signing_credential(environ)[1]
    if service in ("ec2", "s3"):
        return service
    return "query"


def _error_response(protocol, target, status, code, message, error_type="Sender"):
    """The (status, headers, body) of the AWS error ``code`` in ``protocol``."""
    request_id = str(uuid.uuid4())
    if protocol in ("dynamodb", "json"):
        namespace = ""
        if protocol == "dynamodb":
            namespace = "com.amazonaws.dynamodb.v" + target.split(".")[0][len("DynamoDB_"):] + "#"
        body = json.dumps({"__type": namespace + code, "message": message})
        headers = [("Content-Type", "application/x-amz-json-1.0"), ("x-amzn-RequestId", request_id)]
    elif protocol == "ec2":
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error>'
            f"<Code>{code}</Code><Message>{message}</Message></Error></Errors>"
            f"<RequestID>{request_id}</RequestID></Response>"
        )
        headers = [("Content-Type", "text/xml;charset=UTF-8")]
    elif protocol == "s3":
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n<Error>'
            f"<Code>{code}</Code><Message>{message}</Message>"
            f"<RequestId>{request_id}</RequestId></Error>"
        )
        headers = [("Content-Type", "application/xml"), ("x-amz-request-id", request_id)]
    else:
        body = (
            "<ErrorResponse><Error>"
            f"<Type>{error_type}</Type>"
            f"<Code>{code}</Code><Message>{message}</Message></Error>"
            f"<RequestId>{request_id}</RequestId></ErrorResponse>"
        )
        headers = [("Content-Type", "text/xml"), ("x-amzn-RequestId", request_id)]
    body = body.encode()
    return status, headers + [("Content-Length", str(len(body)))], body


def _aws_error(environ, target, code_kind):
    """The (status, headers, body) of an AWS error of ``code_kind``
    ("throttle" or "server_error") in the protocol of the request."""
    throttle = code_kind == "throttle"
    status = "400 Bad Request" if throttle else "500 Internal Server Error"
    protocol = _protocol_of(environ, target)
    if protocol in ("dynamodb", "json"):
        code = "ThrottlingException" if throttle else (
            "InternalServerError" if protocol == "dynamodb" else "InternalFailure")
        message = "Rate exceeded" if throttle else "Internal server error"
    elif protocol == "ec2":
        code = "RequestLimitExceeded" if throttle else "InternalError"
        message = "Request limit exceeded." if throttle else "An internal error has occurred."
    else:
        code = "Throttling" if throttle else "InternalFailure"
        message = "Rate exceeded" if throttle else "An internal error has occurred."
        protocol = "query"
    return _error_response(protocol, target, status, code, message,
                           "Sender" if throttle else "Receiver")


class FaultInjector:
    """WSGI middleware in front of moto: serves ``/_safehold/*``, answers
    requests signed with a rejected access key (patch g) and injects
    throttling errors, 5xx errors and latency per the fault rules."""

    def __init__(self, app, settings, seed):
        self.app = app
        self.settings = settings
        self.rng = random.Random(seed)
        self.rules = []
        self.next_rule_id = 1
        self.calls = {}
        self.calls_by_key = {}
        self.lock = threading.Lock()

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path == "/_safehold/faults":
            return self.faults_endpoint(environ, start_response)
        if path == "/_safehold/config":
            return self.config_endpoint(environ, start_response)
        if path == "/_safehold/calls":
            return self.calls_endpoint(environ, start_response)
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        action = self.action_of(environ, target)
        if action is not None:
            with self.lock:
                self.calls[action] = self.calls.get(action, 0) + 1
                key, _ = _signing_credential(environ)
                per_key = self.calls_by_key.setdefault(key or "unsigned", {})
                per_key[action] = per_key.get(action, 0) + 1
        rejection = rejected_access_key_error(environ, target, self.settings)
        if rejection is not None:
            status, headers, body = rejection
            start_response(status, headers)
            return [body]
        rule = self.firing_rule(action)
        if rule is None:
            return self.app(environ, start_response)
        if rule["kind"] == "latency":
            time.sleep(rule["delay_ms"] / 1000.0)
            return self.app(environ, start_response)
        status, headers, body = _aws_error(environ, target, rule["kind"])
        start_response(status, headers)
        return [body]

    @staticmethod
    def action_of(environ, target):
        """The API action: ``X-Amz-Target``'s operation, else ``Action=`` of
        the query string or of a form body (which is put back for moto)."""
        if target:
            return target.rsplit(".", 1)[-1]
        action = parse_qs(environ.get("QUERY_STRING", "")).get("Action")
        if action:
            return action[0]
        if not environ.get("CONTENT_TYPE", "").startswith("application/x-www-form-urlencoded"):
            return None
        length = int(environ.get("CONTENT_LENGTH") or 0)
        if not length:
            return None
        body = environ["wsgi.input"].read(length)
        environ["wsgi.input"] = io.BytesIO(body)
        action = parse_qs(body.decode("utf-8", "replace")).get("Action")
        return action[0] if action else None

    def firing_rule(self, action):
        if action is None:
            return None
        with self.lock:
            for rule in self.rules:
                if rule["action"] not in ("*", action):
                    continue
                if rule["count"] is not None and rule["fired"] >= rule["count"]:
                    continue
                if self.rng.random() < rule["probability"]:
                    rule["fired"] += 1
                    return dict(rule)
        return None

    def faults_endpoint(self, environ, start_response):
        method = environ["REQUEST_METHOD"]
        if method == "GET":
            with self.lock:
                return _json_response(start_response, "200 OK", {"rules": [dict(r) for r in self.rules]})
        if method == "DELETE":
            with self.lock:
                self.rules.clear()
            return _json_response(start_response, "200 OK", {"rules": []})
        if method != "POST":
            return _json_response(start_response, "405 Method Not Allowed", {"error": "use GET, POST or DELETE"})
        try:
            rule = self.parse_rule(_read_json(environ))
        except (ValueError, TypeError) as error:
            return _json_response(start_response, "400 Bad Request", {"error": str(error)})
        with self.lock:
            rule["id"] = self.next_rule_id
            self.next_rule_id += 1
            self.rules.append(rule)
            return _json_response(start_response, "201 Created", dict(rule))

    @staticmethod
    def parse_rule(spec):
        if not isinstance(spec, dict):
            raise ValueError("a fault rule is a JSON object")
        action = spec.get("action", "*")
        kind = spec.get("kind")
        probability = float(spec.get("probability", 1.0))
        count = spec.get("count")
        delay_ms = int(spec.get("delay_ms", 0))
        if not isinstance(action, str) or not action:
            raise ValueError("action must be an API action name or '*'")
        if kind not in FAULT_KINDS:
            raise ValueError(f"kind must be one of {', '.join(FAULT_KINDS)}")
        if not 0.0 <= probability <= 1.0:
            raise ValueError("probability must be between 0 and 1")
        if count is not None and (not isinstance(count, int) or count < 0):
            raise ValueError("count must be null or a non-negative integer")
        if delay_ms < 0:
            raise ValueError("delay_ms must be non-negative")
        return {"action": action, "kind": kind, "probability": probability,
                "count": count, "delay_ms": delay_ms, "fired": 0}

    def calls_endpoint(self, environ, start_response):
        method = environ["REQUEST_METHOD"]
        with self.lock:
            if method == "DELETE":
                self.calls.clear()
                self.calls_by_key.clear()
            elif method != "GET":
                return _json_response(start_response, "405 Method Not Allowed", {"error": "use GET or DELETE"})
            return _json_response(start_response, "200 OK", {
                "calls": dict(self.calls),
                "by_access_key": {k: dict(v) for k, v in self.calls_by_key.items()},
            })

    def config_endpoint(self, environ, start_response):
        method = environ["REQUEST_METHOD"]
        if method == "POST":
            try:
                self.settings.update(_read_json(environ))
            except ValueError as error:
                return _json_response(start_response, "400 Bad Request", {"error": str(error)})
        elif method != "GET":
            return _json_response(start_response, "405 Method Not Allowed", {"error": "use GET or POST"})
        return _json_response(start_response, "200 OK", self.settings.as_dict())


# --------------------------------------------------------------------------
# b. snapshots pending for N polls
# --------------------------------------------------------------------------


def patch_snapshots_pending_for_polls(settings):
    """CreateSnapshot(s)/CopySnapshot snapshots stay ``pending`` (Progress
    < 100%) in the first N DescribeSnapshots calls that return them."""
    lock = threading.Lock()
    describe_call = threading.local()
    original_create = EBSBackend.create_snapshot
    original_copy = EBSBackend.copy_snapshot
    original_describe = EBSBackend.describe_snapshots
    original_describe_action = ElasticBlockStore.describe_snapshots

    def start_pending(snapshot):
        if settings.pending_polls > 0:
            snapshot.status = "pending"
            snapshot.safehold_progress = "0%"
            snapshot.safehold_polls_total = snapshot.safehold_polls_left = settings.pending_polls
        return snapshot

    def advance(snapshot):
        if snapshot.status != "pending" or not hasattr(snapshot, "safehold_polls_left"):
            return
        total, left = snapshot.safehold_polls_total, snapshot.safehold_polls_left
        if left == 0:
            snapshot.status = "completed"
            snapshot.safehold_progress = "100%"
        else:
            snapshot.safehold_progress = f"{(total - left) * 100 // total}%"
            snapshot.safehold_polls_left = left - 1

    def create_snapshot(self, volume_id, description, owner_id=None, from_ami=None):
        snapshot = original_create(self, volume_id, description, owner_id=owner_id, from_ami=from_ami)
        return snapshot if from_ami else start_pending(snapshot)

    def copy_snapshot(self, *args, **kwargs):
        return start_pending(original_copy(self, *args, **kwargs))

    def describe_snapshots(self, snapshot_ids=None, filters=None, **kwargs):
        if not getattr(describe_call, "active", False):
            return original_describe(self, snapshot_ids, filters, **kwargs)
        filters = dict(filters or {})
        status_filter = filters.pop("status", None)
        snapshots = original_describe(self, snapshot_ids, filters, **kwargs)
        with lock:
            for snapshot in snapshots:
                advance(snapshot)
        if status_filter is not None:
            snapshots = generic_filter({"status": status_filter}, snapshots)
        return snapshots

    def describe_snapshots_action(self):
        describe_call.active = True
        try:
            return original_describe_action(self)
        finally:
            describe_call.active = False

    Snapshot.progress = property(lambda snapshot: getattr(snapshot, "safehold_progress", "100%"))
    # CreateSnapshots' SnapshotInfo serializes State as ``state``, not ``status``.
    Snapshot.state = property(lambda snapshot: snapshot.status)
    EBSBackend.create_snapshot = create_snapshot
    EBSBackend.copy_snapshot = copy_snapshot
    EBSBackend.describe_snapshots = describe_snapshots
    ElasticBlockStore.describe_snapshots = describe_snapshots_action


# --------------------------------------------------------------------------
# c. shared snapshots visible and copyable by the grantee
# --------------------------------------------------------------------------


def patch_shared_snapshots():
    """DescribeSnapshots (and so CopySnapshot) in account B also covers other
    accounts' snapshots of the region that grant B (or ``all``)
    createVolumePermission; OwnerIds and RestorableByUserIds are honoured."""

    def shared_with(backend):
        caller, region = backend.account_id, backend.region_name
        for account_id, regions in list(ec2_backends.items()):
            owner_backend = dict.get(regions, region)
            if account_id == caller or owner_backend is None:
                continue
            for snapshot in list(owner_backend.snapshots.values()):
                if (caller in snapshot.create_volume_permission_userids
                        or "all" in snapshot.create_volume_permission_groups):
                    yield snapshot

    def restorable_by(snapshot, user, caller):
        if user == "all":
            return "all" in snapshot.create_volume_permission_groups
        if user == "self":
            user = caller
        return user == snapshot.owner_id or user in snapshot.create_volume_permission_userids

    def describe_snapshots(self, snapshot_ids=None, filters=None, owner_ids=None, restorable_by_ids=None):
        matches = list(self.snapshots.values()) + list(shared_with(self))
        if snapshot_ids:
            matches = [s for s in matches if s.id in snapshot_ids]
            missing = sorted(set(snapshot_ids) - {s.id for s in matches})
            if missing:
                raise EC2ClientError("InvalidSnapshot.NotFound", f"The snapshot '{missing[0]}' does not exist.")
        if owner_ids:
            owners = {self.account_id if o == "self" else o for o in owner_ids}
            matches = [s for s in matches if s.owner_id in owners]
        if restorable_by_ids:
            matches = [s for s in matches
                       if any(restorable_by(s, u, self.account_id) for u in restorable_by_ids)]
        return generic_filter(filters, matches) if filters else matches

    def describe_snapshots_action(self):
        snapshots = self.ec2_backend.describe_snapshots(
            snapshot_ids=self._get_param("SnapshotIds", []),
            filters=self._filters_from_querystring(),
            owner_ids=self._get_param("OwnerIds", []),
            restorable_by_ids=self._get_param("RestorableByUserIds", []),
        )
        return ActionResult({"Snapshots": snapshots})

    EBSBackend.describe_snapshots = describe_snapshots
    ElasticBlockStore.describe_snapshots = describe_snapshots_action


# --------------------------------------------------------------------------
# d, e, f. AMIs with the block device mappings AWS gives them
# --------------------------------------------------------------------------


def let_amis_carry_block_device_mappings():
    """Foundation of patches d, e and f: an AMI may carry explicit
    BlockDeviceMappings, which then replace moto's fixed 15 GiB root."""
    moto_mappings = Ami.block_device_mappings.fget
    Ami.block_device_mappings = property(
        lambda ami: getattr(ami, "safehold_block_device_mappings", None) or moto_mappings(ami)
    )


def _set_ami_mappings(ami, mappings, root_device_name):
    """Give ``ami`` explicit mappings and drop moto's placeholder snapshot."""
    ami.safehold_block_device_mappings = mappings
    ami.root_device_name = root_device_name
    ami.root_device_type = "ebs"
    ami.ec2_backend.snapshots.pop(ami.ebs_snapshot.id, None)


def _flag(value, default):
    if value is None:
        return default
    return value if isinstance(value, bool) else str(value).lower() == "true"


def patch_register_image_block_device_mappings():
    """RegisterImage honours BlockDeviceMappings and RootDeviceName."""
    original_register = AmiBackend.register_image

    def resolve(backend, mapping):
        ebs = mapping.get("Ebs")
        if not ebs:
            return {k: v for k, v in mapping.items() if k in ("DeviceName", "VirtualName", "NoDevice")}
        snapshot = None
        if ebs.get("SnapshotId"):
            snapshot = backend.describe_snapshots(snapshot_ids=[ebs["SnapshotId"]])[0]
        resolved = {
            "SnapshotId": ebs.get("SnapshotId"),
            "VolumeSize": int(ebs.get("VolumeSize") or (snapshot.volume_size if snapshot else 0)),
            "DeleteOnTermination": _flag(ebs.get("DeleteOnTermination"), True),
            "VolumeType": ebs.get("VolumeType") or "gp2",
            "Encrypted": snapshot.encrypted if snapshot else _flag(ebs.get("Encrypted"), False),
        }
        for optional in ("Iops", "Throughput", "KmsKeyId"):
            if ebs.get(optional) is not None:
                resolved[optional] = ebs[optional]
        return {"DeviceName": mapping.get("DeviceName"), "Ebs": resolved}

    def register_image(self, name=None, description=None, block_device_mappings=None, root_device_name=None):
        mappings = [resolve(self, m) for m in block_device_mappings or []]
        ami = original_register(self, name, description)
        if mappings:
            _set_ami_mappings(ami, mappings, root_device_name or mappings[0]["DeviceName"])
            for mapping in mappings:
                snapshot = self.snapshots.get(mapping.get("Ebs", {}).get("SnapshotId"))
                if snapshot is not None and not snapshot.from_ami:
                    snapshot.from_ami = ami.id
        return ami

    def register_image_action(self):
        self.error_on_dryrun()
        image = self.ec2_backend.register_image(
            self._get_param("Name"),
            self._get_param("Description", ""),
            block_device_mappings=self._get_param("BlockDeviceMappings", []),
            root_device_name=self._get_param("RootDeviceName"),
        )
        return ActionResult({"ImageId": image.id})

    AmiBackend.register_image = register_image
    AmisResponse.register_image = register_image_action


def patch_create_image_snapshots_volumes():
    """CreateImage snapshots every attached volume and maps them by device."""
    original_create_image = AmiBackend.create_image

    def create_image(self, instance_id, name, description, tag_specifications):
        snapshot_tags = [tag for spec in tag_specifications if spec["ResourceType"] == "snapshot"
                         for tag in spec.get("Tags", [])]
        other_specs = [spec for spec in tag_specifications if spec["ResourceType"] != "snapshot"]
        ami = original_create_image(self, instance_id, name, description, other_specs)
        instance = self.get_instance(instance_id)
        mappings = []
        for device, block in instance.get_block_device_mapping:
            volume = self.get_volume(block.volume_id)
            snapshot = self.create_snapshot(
                volume.id,
                f"Created by CreateImage({instance_id}) for {ami.id} from {volume.id}",
                from_ami=ami.id,
            )
            for tag in snapshot_tags:
                snapshot.add_tag(tag["Key"], tag["Value"])
            ebs = {"SnapshotId": snapshot.id, "VolumeSize": volume.size,
                   "DeleteOnTermination": bool(block.delete_on_termination),
                   "VolumeType": volume.volume_type, "Encrypted": bool(volume.encrypted)}
            if volume.iops:
                ebs["Iops"] = volume.iops
            mappings.append({"DeviceName": device, "Ebs": ebs})
        if mappings:
            _set_ami_mappings(ami, mappings, instance.root_device_name)
        return ami

    AmiBackend.create_image = create_image


def patch_copy_image_copies_snapshots():
    """CopyImage copies each snapshot of the source AMI's mappings. With
    ``Encrypted=true`` every copied snapshot is encrypted, with ``KmsKeyId``
    when given, else with the source snapshot's key (AWS uses the
    destination's default key; the emulator has no default key to name)."""
    original_copy_image = AmiBackend.copy_image

    def copy_image(self, source_image_id, source_region, name=None, description=None,
                   encrypted=False, kms_key_id=None):
        source_backend = ec2_backends[self.account_id][source_region]
        source = source_backend.describe_images(ami_ids=[source_image_id])[0]
        ami = original_copy_image(self, source_image_id, source_region, name, description)
        source_mappings = getattr(source, "safehold_block_device_mappings", None)
        if not source_mappings:
            return ami
        mappings = []
        for mapping in source_mappings:
            mapping = json.loads(json.dumps(mapping))
            ebs = mapping.get("Ebs")
            if ebs and ebs.get("SnapshotId"):
                source_snapshot = source_backend.get_snapshot(ebs["SnapshotId"])
                copy = Snapshot(
                    self, random_snapshot_id(), source_snapshot.volume,
                    f"Copied for DestinationAmi {ami.id} from SourceAmi {source.id} "
                    f"for SourceSnapshot {source_snapshot.id}",
                    encrypted=bool(encrypted) or source_snapshot.encrypted,
                    kms_key_id=(kms_key_id if encrypted and kms_key_id
                                else source_snapshot.kms_key_id),
                    from_ami=ami.id,
                )
                self.snapshots[copy.id] = copy
                ebs["SnapshotId"] = copy.id
            mappings.append(mapping)
        _set_ami_mappings(ami, mappings, source.root_device_name)
        return ami

    def copy_image_action(self):
        self.error_on_dryrun()
        image = self.ec2_backend.copy_image(
            self._get_param("SourceImageId"),
            self._get_param("SourceRegion"),
            self._get_param("Name"),
            self._get_param("Description"),
            encrypted=self._get_param("Encrypted") in (True, "true"),
            kms_key_id=self._get_param("KmsKeyId"),
        )
        return ActionResult({"ImageId": image.id})

    AmiBackend.copy_image = copy_image
    AmisResponse.copy_image = copy_image_action


# --------------------------------------------------------------------------
# g. rejected access keys
# --------------------------------------------------------------------------


def rejected_access_key_error(environ, target, settings):
    """A request signed with an access key AWS does not accept (unknown,
    deleted or deactivated) fails authentication before its action runs:
    STS, RDS, Redshift, SNS and the other query services answer HTTP 403
    ``InvalidClientTokenId`` "The security token included in the request is
    invalid."; EC2 answers HTTP 401 ``AuthFailure`` "AWS was not able to
    validate the provided access credentials"; DynamoDB answers HTTP 400
    ``com.amazonaws.dynamodb.v20120810#UnrecognizedClientException`` with
    the security-token message; S3 answers HTTP 403 ``InvalidAccessKeyId``.
    Returns that (status, headers, body) when the SigV4 credential's access
    key id is in ``settings.rejected_access_keys``, else None."""
    access_key = _signing_credential(environ)[0]
    if access_key is None or access_key not in settings.rejected_access_keys:
        return None
    protocol = _protocol_of(environ, target)
    if protocol in ("dynamodb", "json"):
        return _error_response(protocol, target, "400 Bad Request", "UnrecognizedClientException",
                               "The security token included in the request is invalid.")
    if protocol == "ec2":
        return _error_response(protocol, target, "401 Unauthorized", "AuthFailure",
                               "AWS was not able to validate the provided access credentials")
    if protocol == "s3":
        return _error_response(protocol, target, "403 Forbidden", "InvalidAccessKeyId",
                               "The AWS Access Key Id you provided does not exist in our records.")
    return _error_response(protocol, target, "403 Forbidden", "InvalidClientTokenId",
                           "The security token included in the request is invalid.")


# --------------------------------------------------------------------------
# h. root-user access keys
# --------------------------------------------------------------------------


def patch_root_access_keys(settings):
    """GetCallerIdentity called with the access key of an account's root user
    returns the root identity: ``Arn`` ``arn:aws:iam::<account>:root`` and
    ``UserId`` the account id (``Account`` unchanged). Keys listed in
    ``settings.root_access_keys`` are treated as root keys of the account
    moto assigns them (123456789012 for unknown keys)."""
    original_get_caller_identity = STSBackend.get_caller_identity

    def get_caller_identity(self, access_key_id, region):
        user_id, arn, account_id = original_get_caller_identity(self, access_key_id, region)
        if access_key_id in settings.root_access_keys:
            return account_id, f"arn:{get_partition(region)}:iam::{account_id}:root", account_id
        return user_id, arn, account_id

    STSBackend.get_caller_identity = get_caller_identity


# --------------------------------------------------------------------------
# i. shared RDS and Aurora snapshots visible and copyable by the grantee
# --------------------------------------------------------------------------


class _SharedSnapshotView:
    """A DB (cluster) snapshot as another account sees it: identified by its
    ARN, without the owner's tags."""

    def __init__(self, snapshot, identifier_attribute):
        self._snapshot = snapshot
        self._identifier_attribute = identifier_attribute

    def __getattr__(self, name):
        if name == self._identifier_attribute:
            return self._snapshot.arn
        if name in ("tags", "tag_list"):
            return []
        return getattr(self._snapshot, name)


def patch_shared_db_snapshots():
    """DescribeDBSnapshots / DescribeDBClusterSnapshots in account B also
    cover other accounts' manual snapshots of the region whose ``restore``
    attribute lists B (``IncludeShared``, ``SnapshotType=shared``) or ``all``
    (``IncludePublic``, ``SnapshotType=public``), identified by their ARN;
    CopyDBSnapshot / CopyDBClusterSnapshot in B accept such a snapshot's ARN,
    from any region. Calls without those parameters keep moto's behaviour."""
    kinds = {
        DBSnapshot: ("db_snapshot_identifier", "db-snapshot-id", "db-instance-id"),
        DBClusterSnapshot: ("db_cluster_snapshot_identifier", "db-cluster-snapshot-id", "db-cluster-id"),
    }
    original_get_snapshot = RDSBackend.get_snapshot
    original_describe = {DBSnapshot: RDSBackend.describe_db_snapshots,
                         DBClusterSnapshot: RDSBackend.describe_db_cluster_snapshots}

    def restorable(snapshot, account_id, audiences):
        restore = snapshot.attributes["restore"]
        return snapshot.snapshot_type == "manual" and (
            ("shared" in audiences and account_id in restore)
            or ("public" in audiences and "all" in restore))

    def get_snapshot(self, identifier, resource_type, not_found_exception):
        if identifier.startswith("arn:"):
            region, account_id, _, name = split_arn(identifier)
            if account_id != self.account_id:
                owner_backend = dict.get(dict.get(rds_backends, account_id) or {}, region)
                snapshots = owner_backend.resource_map[resource_type] if owner_backend else {}
                snapshot = snapshots.get(name) or snapshots.get(name.lower())
                if snapshot is None or not restorable(snapshot, self.account_id, ("shared", "public")):
                    raise not_found_exception(identifier)
                return snapshot
        return original_get_snapshot(self, identifier, resource_type, not_found_exception)

    def others(self, resource_type, audiences, owner_id, snapshot_id, filters):
        identifier_attribute, id_filter, owner_filter = kinds[resource_type]
        filters = dict(filters or {})
        arns = [a.lower() for a in filters.pop(id_filter, []) + ([snapshot_id] if snapshot_id else [])]
        if owner_id:
            filters[owner_filter] = filters.get(owner_filter, []) + [owner_id]
        found = {}
        for account_id, regions in list(rds_backends.items()):
            backend = dict.get(regions, self.region_name)
            if account_id == self.account_id or backend is None:
                continue
            for snapshot in list(backend.resource_map[resource_type].values()):
                if restorable(snapshot, self.account_id, audiences) and (
                        not arns or snapshot.arn.lower() in arns):
                    found[snapshot.arn] = snapshot
        if filters:
            found = self._filter_resources(found, filters, resource_type)
        return [_SharedSnapshotView(s, identifier_attribute) for s in found.values()]

    def describe(resource_type, not_found_exception):
        moto_parameters = inspect.signature(original_describe[resource_type])

        def describe_snapshots(self, *args, include_shared=False, include_public=False, **kwargs):
            bound = moto_parameters.bind(self, *args, **kwargs)
            bound.apply_defaults()
            _, owner_id, snapshot_id, snapshot_type, filters = bound.args
            if snapshot_type in ("shared", "public"):
                audiences, own = (snapshot_type,), []
            else:
                audiences = () if snapshot_type else tuple(
                    a for a, wanted in (("shared", include_shared), ("public", include_public)) if wanted)
                try:
                    own = original_describe[resource_type](self, owner_id, snapshot_id, snapshot_type, filters)
                except not_found_exception:
                    if not audiences:
                        raise
                    own = []
                if not audiences:
                    return own
            found = own + others(self, resource_type, audiences, owner_id, snapshot_id, filters)
            if snapshot_id and not found and not owner_id:
                raise not_found_exception(snapshot_id)
            return found
        return describe_snapshots

    def action(resource_type, owner_param, snapshot_param, result_key):
        def describe_action(self):
            filters = {f["Name"]: f["Values"] for f in self.params.get("Filters", [])}
            describe = (self.backend.describe_db_snapshots if resource_type is DBSnapshot
                        else self.backend.describe_db_cluster_snapshots)
            snapshots = describe(
                self.params.get(owner_param), self.params.get(snapshot_param),
                self.params.get("SnapshotType"), filters,
                include_shared=_flag(self.params.get("IncludeShared"), False),
                include_public=_flag(self.params.get("IncludePublic"), False),
            )
            return ActionResult({result_key: snapshots})
        return describe_action

    RDSBackend.get_snapshot = get_snapshot
    RDSBackend.describe_db_snapshots = describe(DBSnapshot, DBSnapshotNotFoundFault)
    RDSBackend.describe_db_cluster_snapshots = describe(DBClusterSnapshot, DBClusterSnapshotNotFoundError)
    RDSResponse.describe_db_snapshots = action(
        DBSnapshot, "DBInstanceIdentifier", "DBSnapshotIdentifier", "DBSnapshots")
    RDSResponse.describe_db_cluster_snapshots = action(
        DBClusterSnapshot, "DBClusterIdentifier", "DBClusterSnapshotIdentifier", "DBClusterSnapshots")


# --------------------------------------------------------------------------
# j. RunInstances creates the AMI's volumes
# --------------------------------------------------------------------------


def _merged_mappings(image_mappings, requested):
    """The AMI's mappings by device, overridden or extended by the request's."""
    by_device = {m["DeviceName"]: json.loads(json.dumps(m)) for m in image_mappings or []}
    for mapping in requested or []:
        device = mapping.get("DeviceName")
        if mapping.get("NoDevice") == "":
            by_device.pop(device, None)
            continue
        ebs = {k: v for k, v in (mapping.get("Ebs") or {}).items() if v is not None}
        merged = by_device.setdefault(device, {"DeviceName": device, "Ebs": {}})
        merged.setdefault("Ebs", {}).update(ebs)
    return [m for m in by_device.values() if m.get("Ebs")]


def patch_run_instances_image_mappings():
    """RunInstances makes one volume per EBS mapping of the AMI and of the
    request (request fields win per device), with Iops and the volume tags;
    DisableApiTermination is kept."""
    original_run = InstanceBackend.run_instances
    original_action = InstanceResponse.run_instances
    launch = threading.local()

    def run_instances(self, image_id, count, user_data, security_group_names, **kwargs):
        try:
            ami = self.describe_images(ami_ids=[image_id])[0] if image_id else None
        except EC2ClientError:
            ami = None
        image_mappings = getattr(ami, "safehold_block_device_mappings", None)
        requested = kwargs.get("block_device_mappings")
        if not image_mappings and not requested:
            reservation = original_run(self, image_id, count, user_data, security_group_names, **kwargs)
        else:
            mappings = _merged_mappings(image_mappings, requested)
            volume_tags = (kwargs.get("tags") or {}).get("volume", {})
            kwargs["block_device_mappings"] = []
            reservation = original_run(self, image_id, count, user_data, security_group_names, **kwargs)
            for instance in reservation.instances:
                for mapping in mappings:
                    ebs = mapping["Ebs"]
                    volume = self.create_volume(
                        size=int(ebs["VolumeSize"]) if ebs.get("VolumeSize") else None,
                        zone_name=instance._placement.zone,
                        snapshot_id=ebs.get("SnapshotId"),
                        encrypted=_flag(ebs.get("Encrypted"), False),
                        kms_key_id=ebs.get("KmsKeyId"),
                        volume_type=ebs.get("VolumeType"),
                        iops=int(ebs["Iops"]) if ebs.get("Iops") else None,
                    )
                    volume.add_tags(volume_tags)
                    self.attach_volume(volume.id, instance.id, mapping["DeviceName"],
                                       _flag(ebs.get("DeleteOnTermination"), True))
        if getattr(launch, "disable_api_termination", False):
            for instance in reservation.instances:
                instance.disable_api_termination = True
        return reservation

    def run_instances_action(self):
        launch.disable_api_termination = _flag(self._get_param("DisableApiTermination"), False)
        try:
            return original_action(self)
        finally:
            launch.disable_api_termination = False

    InstanceBackend.run_instances = run_instances
    InstanceResponse.run_instances = run_instances_action


# --------------------------------------------------------------------------
# k. volumes from snapshots shared by another account
# --------------------------------------------------------------------------


def patch_create_volume_from_shared_snapshot():
    """CreateVolume accepts a snapshot another account shares with the
    caller (createVolumePermission, patch c)."""
    original_create_volume = EBSBackend.create_volume

    def create_volume(self, size=None, zone_name=None, snapshot_id=None, encrypted=False,
                      kms_key_id=None, **kwargs):
        if not snapshot_id or snapshot_id in self.snapshots:
            return original_create_volume(self, size=size, zone_name=zone_name, snapshot_id=snapshot_id,
                                          encrypted=encrypted, kms_key_id=kms_key_id, **kwargs)
        # InvalidSnapshot.NotFound unless shared with this account.
        snapshot = self.describe_snapshots(snapshot_ids=[snapshot_id])[0]
        if snapshot.encrypted:
            encrypted, kms_key_id = True, kms_key_id or snapshot.kms_key_id
        volume = original_create_volume(
            self, size=size if size is not None else snapshot.volume_size, zone_name=zone_name,
            snapshot_id=None, encrypted=encrypted, kms_key_id=kms_key_id, **kwargs)
        volume.snapshot_id = snapshot_id
        return volume

    EBSBackend.create_volume = create_volume


# --------------------------------------------------------------------------
# l. RegisterImage architecture and tags
# --------------------------------------------------------------------------


def patch_register_image_architecture_and_tags():
    """RegisterImage keeps Architecture and the ``image`` TagSpecifications."""
    original_action = AmisResponse.register_image

    def register_image_action(self):
        result = original_action(self)
        image = self.ec2_backend.describe_images(ami_ids=[result.result["ImageId"]])[0]
        image.architecture = self._get_param("Architecture") or "x86_64"
        image.add_tags(self._parse_tag_specification().get("image", {}))
        return result

    AmisResponse.register_image = register_image_action


def install_patches(settings):
    """Apply every patch, in an order where wrappers see their base. Patch a
    (``FaultInjector``) and the request check of patch g
    (``rejected_access_key_error``) run in the WSGI middleware."""
    patch_shared_snapshots()
    patch_snapshots_pending_for_polls(settings)
    let_amis_carry_block_device_mappings()
    patch_register_image_block_device_mappings()
    patch_create_image_snapshots_volumes()
    patch_copy_image_copies_snapshots()
    patch_register_image_architecture_and_tags()
    patch_run_instances_image_mappings()
    patch_create_volume_from_shared_snapshot()
    patch_root_access_keys(settings)
    patch_shared_db_snapshots()


def main(argv=None):
    parser = argparse.ArgumentParser(description="moto server with Safehold's patch layer")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000, help="0 picks a free port")
    parser.add_argument("--pending-polls", type=int, default=0,
                        help="DescribeSnapshots calls a new snapshot stays pending (default 0)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the fault-injection RNG")
    parser.add_argument("--log-requests", action="store_true", help="log every request to stderr")
    args = parser.parse_args(argv)
    if args.pending_polls < 0:
        parser.error("--pending-polls must be non-negative")

    settings = Settings(args.pending_polls)
    install_patches(settings)
    app = FaultInjector(DomainDispatcherApplication(create_backend_app), settings, args.seed)
    if not args.log_requests:
        logging.getLogger("werkzeug").setLevel(logging.ERROR)

    server = make_server(args.host, args.port, app, threaded=True, request_handler=MotoRequestHandler)
    os.environ.setdefault("MOTO_PORT", str(server.server_port))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"ready http://{args.host}:{server.server_port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
