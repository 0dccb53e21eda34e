"""Tests of safehold_emulator.py: each patch shows the AWS behaviour it models.

Run: python3 -m unittest discover -s emulator -p 'test_*.py' -v
"""

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.error
import urllib.request

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

EMULATOR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "safehold_emulator.py")
ACCOUNT_A = "123456789012"  # moto's account for unknown access keys
ACCOUNT_B = "111111111111"
NO_RETRIES = Config(retries={"mode": "standard", "total_max_attempts": 1})


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Emulator:
    """The launcher as a subprocess; ``start`` waits for its ``ready`` line."""

    def __init__(self, *extra_args):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            [sys.executable, EMULATOR, "--host", "127.0.0.1", "--port", str(self.port), *extra_args],
            stdout=subprocess.PIPE, stderr=self.log, text=True,
        )
        self.ready_line = None
        reader = threading.Thread(target=self._read_ready, daemon=True)
        reader.start()
        reader.join(timeout=30)
        if self.ready_line is None:
            self.stop()
            self.log.seek(0)
            raise RuntimeError(f"emulator did not get ready: {self.log.read().decode()[-2000:]}")

    def _read_ready(self):
        self.ready_line = self.process.stdout.readline().strip() or None

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process.stdout.close()
        self.log.close()

    def control(self, method, path, payload=None):
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def client(self, service, region="us-east-1", credentials=None, config=None):
        credentials = credentials or {"AccessKeyId": "testing", "SecretAccessKey": "testing"}
        return boto3.client(
            service, endpoint_url=self.url, region_name=region, config=config,
            aws_access_key_id=credentials["AccessKeyId"],
            aws_secret_access_key=credentials["SecretAccessKey"],
            aws_session_token=credentials.get("SessionToken"),
        )

    def credentials_of(self, account_id):
        """Credentials acting as ``account_id``, through sts:AssumeRole."""
        return self.client("sts").assume_role(
            RoleArn=f"arn:aws:iam::{account_id}:role/SafeholdVault", RoleSessionName="safehold-test"
        )["Credentials"]


class EmulatorTestCase(unittest.TestCase):
    """One emulator (started with ``ARGS``) for the test case's class."""

    ARGS = ()

    @classmethod
    def setUpClass(cls):
        cls.emulator = Emulator(*cls.ARGS)
        cls.ec2 = cls.emulator.client("ec2")

    @classmethod
    def tearDownClass(cls):
        cls.emulator.stop()

    def new_snapshot(self, ec2=None, size=8):
        ec2 = ec2 or self.ec2
        volume = ec2.create_volume(Size=size, AvailabilityZone="us-east-1a")
        return ec2.create_snapshot(VolumeId=volume["VolumeId"], Description="test")


class LauncherTest(EmulatorTestCase):
    def test_prints_ready_line_and_loads_no_default_amis(self):
        self.assertEqual(self.emulator.ready_line, f"ready {self.emulator.url}")
        self.assertEqual(self.ec2.describe_snapshots()["Snapshots"], [])
        self.assertEqual(self.ec2.describe_images()["Images"], [])


class FaultInjectionTest(EmulatorTestCase):
    ARGS = ("--seed", "7")

    def setUp(self):
        self.volume_id = self.ec2.create_volume(Size=8, AvailabilityZone="us-east-1a")["VolumeId"]

    def tearDown(self):
        self.emulator.control("DELETE", "/_safehold/faults")

    def add_rule(self, **rule):
        status, body = self.emulator.control("POST", "/_safehold/faults", rule)
        self.assertEqual(status, 201, body)
        return body

    def test_throttle_fails_count_calls_with_request_limit_exceeded_then_succeeds(self):
        self.add_rule(action="CreateSnapshot", kind="throttle", probability=1, count=2)
        ec2 = self.emulator.client("ec2", config=NO_RETRIES)
        for _ in range(2):
            with self.assertRaises(ClientError) as caught:
                ec2.create_snapshot(VolumeId=self.volume_id)
            self.assertEqual(caught.exception.response["Error"]["Code"], "RequestLimitExceeded")
            self.assertEqual(caught.exception.response["ResponseMetadata"]["HTTPStatusCode"], 400)
        self.assertTrue(ec2.create_snapshot(VolumeId=self.volume_id)["SnapshotId"].startswith("snap-"))

    def test_sdk_retries_throttling_transparently(self):
        self.add_rule(action="CreateSnapshot", kind="throttle", count=1)
        ec2 = self.emulator.client("ec2", config=Config(retries={"mode": "standard", "max_attempts": 3}))
        response = ec2.create_snapshot(VolumeId=self.volume_id)
        self.assertEqual(response["ResponseMetadata"]["RetryAttempts"], 1)

    def test_throttle_other_actions_pass(self):
        self.add_rule(action="CreateSnapshot", kind="throttle")
        self.assertEqual(len(self.ec2.describe_volumes(VolumeIds=[self.volume_id])["Volumes"]), 1)

    def test_dynamodb_throttle_is_throttling_exception(self):
        self.add_rule(action="ListTables", kind="throttle", count=1)
        dynamodb = self.emulator.client("dynamodb", config=NO_RETRIES)
        with self.assertRaises(ClientError) as caught:
            dynamodb.list_tables()
        self.assertEqual(caught.exception.response["Error"]["Code"], "ThrottlingException")
        self.assertEqual(caught.exception.response["ResponseMetadata"]["HTTPStatusCode"], 400)
        self.assertEqual(dynamodb.list_tables()["TableNames"], [])

    def test_query_service_throttle_is_throttling_sender_error(self):
        self.add_rule(action="GetCallerIdentity", kind="throttle", count=1)
        sts = self.emulator.client("sts", config=NO_RETRIES)
        with self.assertRaises(ClientError) as caught:
            sts.get_caller_identity()
        self.assertEqual(caught.exception.response["Error"]["Code"], "Throttling")
        self.assertEqual(caught.exception.response["Error"]["Type"], "Sender")
        self.assertEqual(sts.get_caller_identity()["Account"], ACCOUNT_A)

    def test_server_error_answers_500(self):
        self.add_rule(action="*", kind="server_error", count=2)
        ec2 = self.emulator.client("ec2", config=NO_RETRIES)
        with self.assertRaises(ClientError) as caught:
            ec2.describe_volumes()
        self.assertEqual(caught.exception.response["ResponseMetadata"]["HTTPStatusCode"], 500)
        self.assertEqual(caught.exception.response["Error"]["Code"], "InternalError")
        dynamodb = self.emulator.client("dynamodb", config=NO_RETRIES)
        with self.assertRaises(ClientError) as caught:
            dynamodb.list_tables()
        self.assertEqual(caught.exception.response["ResponseMetadata"]["HTTPStatusCode"], 500)
        self.assertEqual(caught.exception.response["Error"]["Code"], "InternalServerError")

    def test_latency_delays_then_passes_through(self):
        self.add_rule(action="DescribeVolumes", kind="latency", delay_ms=400, count=1)
        started = time.monotonic()
        self.assertEqual(len(self.ec2.describe_volumes(VolumeIds=[self.volume_id])["Volumes"]), 1)
        self.assertGreaterEqual(time.monotonic() - started, 0.4)
        started = time.monotonic()
        self.ec2.describe_volumes(VolumeIds=[self.volume_id])
        self.assertLess(time.monotonic() - started, 0.4)

    def test_probability_zero_never_fires(self):
        self.add_rule(action="DescribeVolumes", kind="server_error", probability=0)
        for _ in range(3):
            self.ec2.describe_volumes(VolumeIds=[self.volume_id])
        _, listing = self.emulator.control("GET", "/_safehold/faults")
        self.assertEqual(listing["rules"][0]["fired"], 0)

    def test_rules_are_listed_with_fired_counts_and_cleared(self):
        rule = self.add_rule(action="DescribeVolumes", kind="latency", delay_ms=1)
        self.assertEqual(rule["id"] > 0 and rule["count"], None)
        self.ec2.describe_volumes()
        self.ec2.describe_volumes()
        status, listing = self.emulator.control("GET", "/_safehold/faults")
        self.assertEqual(status, 200)
        self.assertEqual(
            [{k: r[k] for k in ("action", "kind", "probability", "count", "delay_ms", "fired")}
             for r in listing["rules"]],
            [{"action": "DescribeVolumes", "kind": "latency", "probability": 1.0,
              "count": None, "delay_ms": 1, "fired": 2}],
        )
        self.assertEqual(self.emulator.control("DELETE", "/_safehold/faults"), (200, {"rules": []}))
        self.assertEqual(self.emulator.control("GET", "/_safehold/faults"), (200, {"rules": []}))

    def test_invalid_rule_is_rejected(self):
        status, body = self.emulator.control("POST", "/_safehold/faults", {"action": "*", "kind": "explode"})
        self.assertEqual(status, 400)
        self.assertIn("kind", body["error"])


class CallCountsTest(EmulatorTestCase):
    def test_every_request_is_counted_per_action_faulted_ones_included(self):
        self.emulator.control("DELETE", "/_safehold/calls")
        volume = self.ec2.create_volume(Size=8, AvailabilityZone="us-east-1a")["VolumeId"]
        self.emulator.control("POST", "/_safehold/faults",
                              {"action": "DescribeVolumes", "kind": "throttle", "count": 1})
        try:
            with self.assertRaises(ClientError):
                self.ec2.describe_volumes(VolumeIds=[volume])
        finally:
            self.emulator.control("DELETE", "/_safehold/faults")
        self.ec2.describe_volumes(VolumeIds=[volume])
        status, body = self.emulator.control("GET", "/_safehold/calls")
        self.assertEqual(status, 200)
        # The throttled request counts like the one that went through.
        self.assertEqual(body["calls"], {"CreateVolume": 1, "DescribeVolumes": 2})
        self.assertEqual(body["by_access_key"], {"testing": {"CreateVolume": 1, "DescribeVolumes": 2}})
        empty = {"calls": {}, "by_access_key": {}}
        self.assertEqual(self.emulator.control("DELETE", "/_safehold/calls"), (200, empty))
        self.assertEqual(self.emulator.control("GET", "/_safehold/calls"), (200, empty))

    def test_calls_are_split_by_the_signing_access_key(self):
        self.emulator.control("DELETE", "/_safehold/calls")
        other = self.emulator.client(
            "ec2", credentials={"AccessKeyId": "AKIAOTHERACCOUNT0001", "SecretAccessKey": "x"})
        self.ec2.describe_volumes()
        other.describe_volumes()
        other.describe_snapshots(OwnerIds=["self"])
        _, body = self.emulator.control("GET", "/_safehold/calls")
        self.assertEqual(body["by_access_key"], {
            "testing": {"DescribeVolumes": 1},
            "AKIAOTHERACCOUNT0001": {"DescribeVolumes": 1, "DescribeSnapshots": 1},
        })


class PendingSnapshotsTest(EmulatorTestCase):
    ARGS = ("--pending-polls", "2")

    def tearDown(self):
        self.emulator.control("POST", "/_safehold/config", {"pending_polls": 2})

    def assert_states(self, snapshot_id, expected):
        seen = []
        for _ in expected:
            snapshot = self.ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0]
            seen.append((snapshot["State"], snapshot["Progress"]))
        self.assertEqual(seen, expected)

    def test_create_snapshot_is_pending_for_n_describes_then_completed(self):
        snapshot = self.new_snapshot()
        self.assertEqual(snapshot["State"], "pending")
        self.assert_states(snapshot["SnapshotId"], [
            ("pending", "0%"), ("pending", "50%"), ("completed", "100%"), ("completed", "100%"),
        ])

    def test_status_filter_counts_polls_so_waiting_for_completed_ends(self):
        snapshot_id = self.new_snapshot()["SnapshotId"]
        found = [
            len(self.ec2.describe_snapshots(
                SnapshotIds=[snapshot_id], Filters=[{"Name": "status", "Values": ["completed"]}]
            )["Snapshots"])
            for _ in range(3)
        ]
        self.assertEqual(found, [0, 0, 1])

    def test_only_describes_that_include_the_snapshot_count(self):
        first = self.new_snapshot()["SnapshotId"]
        second = self.new_snapshot()["SnapshotId"]
        self.ec2.describe_snapshots(SnapshotIds=[first])
        self.ec2.describe_snapshots(SnapshotIds=[first])
        self.assert_states(second, [("pending", "0%")])
        self.assert_states(first, [("completed", "100%")])

    def test_create_snapshots_and_copy_snapshot_are_pending_too(self):
        instance = self.ec2.run_instances(ImageId="ami-12345678", MinCount=1, MaxCount=1)["Instances"][0]
        snapshots = self.ec2.create_snapshots(
            InstanceSpecification={"InstanceId": instance["InstanceId"]})["Snapshots"]
        self.assertEqual([s["State"] for s in snapshots], ["pending"])
        source = self.new_snapshot()["SnapshotId"]
        copy = self.emulator.client("ec2", "us-west-2").copy_snapshot(
            SourceSnapshotId=source, SourceRegion="us-east-1")["SnapshotId"]
        west = self.emulator.client("ec2", "us-west-2")
        states = [west.describe_snapshots(SnapshotIds=[copy])["Snapshots"][0]["State"] for _ in range(3)]
        self.assertEqual(states, ["pending", "pending", "completed"])

    def test_pending_polls_set_at_runtime(self):
        no_keys = {"rejected_access_keys": [], "root_access_keys": []}
        self.assertEqual(self.emulator.control("GET", "/_safehold/config"),
                         (200, {"pending_polls": 2, **no_keys}))
        self.assertEqual(self.emulator.control("POST", "/_safehold/config", {"pending_polls": 1}),
                         (200, {"pending_polls": 1, **no_keys}))
        self.assert_states(self.new_snapshot()["SnapshotId"], [("pending", "0%"), ("completed", "100%")])
        self.emulator.control("POST", "/_safehold/config", {"pending_polls": 0})
        snapshot = self.new_snapshot()
        self.assertEqual(snapshot["State"], "completed")
        self.assertEqual(self.emulator.control("POST", "/_safehold/config", {"pending_polls": -1})[0], 400)


class AccessKeysTest(EmulatorTestCase):
    REJECTED = {"AccessKeyId": "AKIAREJECTED00000001", "SecretAccessKey": "rejected-secret"}
    ROOT = {"AccessKeyId": "AKIAROOTUSER00000001", "SecretAccessKey": "root-secret"}
    OTHER = {"AccessKeyId": "AKIAOTHERUSER0000001", "SecretAccessKey": "other-secret"}

    def setUp(self):
        status, body = self.emulator.control("POST", "/_safehold/config", {
            "rejected_access_keys": [self.REJECTED["AccessKeyId"]],
            "root_access_keys": [self.ROOT["AccessKeyId"]],
        })
        self.assertEqual(status, 200, body)

    def tearDown(self):
        self.emulator.control("POST", "/_safehold/config", {"rejected_access_keys": [], "root_access_keys": []})

    def client(self, service, credentials):
        return self.emulator.client(service, credentials=credentials, config=NO_RETRIES)

    def assert_error(self, call, code, http_status, message):
        with self.assertRaises(ClientError) as caught:
            call()
        response = caught.exception.response
        self.assertEqual((response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"],
                          response["Error"]["Message"]), (code, http_status, message))

    def test_config_shows_and_merges_key_lists(self):
        self.assertEqual(self.emulator.control("GET", "/_safehold/config"), (200, {
            "pending_polls": 0,
            "rejected_access_keys": [self.REJECTED["AccessKeyId"]],
            "root_access_keys": [self.ROOT["AccessKeyId"]],
        }))
        status, body = self.emulator.control("POST", "/_safehold/config", {"pending_polls": 3})
        self.assertEqual((status, body["pending_polls"], body["rejected_access_keys"], body["root_access_keys"]),
                         (200, 3, [self.REJECTED["AccessKeyId"]], [self.ROOT["AccessKeyId"]]))
        status, body = self.emulator.control("POST", "/_safehold/config", {"rejected_access_keys": []})
        self.assertEqual((status, body["pending_polls"], body["rejected_access_keys"], body["root_access_keys"]),
                         (200, 3, [], [self.ROOT["AccessKeyId"]]))
        for bad in ({"rejected_access_keys": "AKIA"}, {"rejected_access_keys": [""]},
                    {"root_access_keys": ["root"]}, {"unknown": 1}, {},
                    {"pending_polls": 1, "rejected_access_keys": [7]}):
            self.assertEqual(self.emulator.control("POST", "/_safehold/config", bad)[0], 400, bad)
        self.assertEqual(self.emulator.control("GET", "/_safehold/config")[1]["pending_polls"], 3)
        self.emulator.control("POST", "/_safehold/config", {"pending_polls": 0})

    def test_rejected_key_fails_sts_with_invalid_client_token_id(self):
        sts = self.client("sts", self.REJECTED)
        self.assert_error(sts.get_caller_identity, "InvalidClientTokenId", 403,
                          "The security token included in the request is invalid.")
        with self.assertRaises(ClientError) as caught:
            sts.get_caller_identity()
        self.assertEqual(caught.exception.response["Error"]["Type"], "Sender")

    def test_rejected_key_fails_ec2_with_auth_failure(self):
        self.assert_error(self.client("ec2", self.REJECTED).describe_volumes, "AuthFailure", 401,
                          "AWS was not able to validate the provided access credentials")

    def test_rejected_key_fails_dynamodb_with_unrecognized_client_exception(self):
        self.assert_error(self.client("dynamodb", self.REJECTED).list_tables, "UnrecognizedClientException", 400,
                          "The security token included in the request is invalid.")

    def test_rejected_key_fails_other_query_services(self):
        for service, call in (("rds", "describe_db_instances"), ("redshift", "describe_clusters"),
                              ("sns", "list_topics")):
            self.assert_error(getattr(self.client(service, self.REJECTED), call), "InvalidClientTokenId", 403,
                              "The security token included in the request is invalid.")

    def test_rejected_key_fails_s3_with_invalid_access_key_id(self):
        self.assert_error(self.client("s3", self.REJECTED).list_buckets, "InvalidAccessKeyId", 403,
                          "The AWS Access Key Id you provided does not exist in our records.")

    def test_rejection_precedes_fault_rules(self):
        self.emulator.control("POST", "/_safehold/faults", {"action": "*", "kind": "throttle"})
        try:
            self.assert_error(self.client("sts", self.REJECTED).get_caller_identity, "InvalidClientTokenId", 403,
                              "The security token included in the request is invalid.")
        finally:
            self.emulator.control("DELETE", "/_safehold/faults")

    def test_other_keys_still_work(self):
        for credentials in (None, self.OTHER, self.ROOT):
            self.assertEqual(self.client("sts", credentials).get_caller_identity()["Account"], ACCOUNT_A)
            self.assertIn("Volumes", self.client("ec2", credentials).describe_volumes())
            self.assertIn("TableNames", self.client("dynamodb", credentials).list_tables())
        self.emulator.control("POST", "/_safehold/config", {"rejected_access_keys": []})
        self.assertEqual(self.client("sts", self.REJECTED).get_caller_identity()["Account"], ACCOUNT_A)

    def test_root_key_is_the_account_root_user(self):
        identity = self.client("sts", self.ROOT).get_caller_identity()
        self.assertTrue(identity["Arn"].endswith(":root"), identity["Arn"])
        self.assertEqual((identity["Arn"], identity["UserId"], identity["Account"]),
                         (f"arn:aws:iam::{ACCOUNT_A}:root", ACCOUNT_A, ACCOUNT_A))
        other = self.client("sts", self.OTHER).get_caller_identity()
        self.assertEqual(other["Arn"], f"arn:aws:sts::{ACCOUNT_A}:user/moto")
        self.emulator.control("POST", "/_safehold/config", {"root_access_keys": []})
        self.assertFalse(self.client("sts", self.ROOT).get_caller_identity()["Arn"].endswith(":root"))


class SharedSnapshotsTest(EmulatorTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.vault = cls.emulator.credentials_of(ACCOUNT_B)
        cls.vault_ec2 = cls.emulator.client("ec2", credentials=cls.vault)

    def share(self, snapshot_id):
        self.ec2.modify_snapshot_attribute(
            SnapshotId=snapshot_id, Attribute="createVolumePermission",
            OperationType="add", UserIds=[ACCOUNT_B],
        )

    def ids(self, response):
        return {s["SnapshotId"] for s in response["Snapshots"]}

    def test_assumed_role_acts_as_the_vault_account(self):
        sts = self.emulator.client("sts", credentials=self.vault)
        self.assertEqual(sts.get_caller_identity()["Account"], ACCOUNT_B)

    def test_shared_snapshot_is_visible_to_the_grantee(self):
        snapshot_id = self.new_snapshot()["SnapshotId"]
        self.share(snapshot_id)
        by_id = self.vault_ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"]
        self.assertEqual([(s["SnapshotId"], s["OwnerId"]) for s in by_id], [(snapshot_id, ACCOUNT_A)])
        self.assertIn(snapshot_id, self.ids(self.vault_ec2.describe_snapshots(RestorableByUserIds=[ACCOUNT_B])))
        self.assertIn(snapshot_id, self.ids(self.vault_ec2.describe_snapshots(RestorableByUserIds=["self"])))
        self.assertIn(snapshot_id, self.ids(self.vault_ec2.describe_snapshots(OwnerIds=[ACCOUNT_A])))
        self.assertIn(snapshot_id, self.ids(self.vault_ec2.describe_snapshots(
            Filters=[{"Name": "owner-id", "Values": [ACCOUNT_A]}])))
        self.assertNotIn(snapshot_id, self.ids(self.vault_ec2.describe_snapshots(OwnerIds=["self"])))

    def test_shared_snapshot_is_copyable_by_the_grantee_across_regions(self):
        snapshot_id = self.new_snapshot(size=12)["SnapshotId"]
        self.share(snapshot_id)
        for region in ("us-east-1", "eu-west-1"):
            vault_ec2 = self.emulator.client("ec2", region, credentials=self.vault)
            copy_id = vault_ec2.copy_snapshot(
                SourceSnapshotId=snapshot_id, SourceRegion="us-east-1", Description="DR copy",
            )["SnapshotId"]
            copy = vault_ec2.describe_snapshots(SnapshotIds=[copy_id])["Snapshots"][0]
            self.assertEqual((copy["OwnerId"], copy["VolumeSize"]), (ACCOUNT_B, 12))
            self.assertIn(copy_id, self.ids(vault_ec2.describe_snapshots(OwnerIds=["self"])))
            with self.assertRaises(ClientError):
                self.emulator.client("ec2", region).describe_snapshots(SnapshotIds=[copy_id])

    def test_unshared_snapshot_is_not_found_by_another_account(self):
        snapshot_id = self.new_snapshot()["SnapshotId"]
        with self.assertRaises(ClientError) as caught:
            self.vault_ec2.describe_snapshots(SnapshotIds=[snapshot_id])
        self.assertEqual(caught.exception.response["Error"]["Code"], "InvalidSnapshot.NotFound")
        self.assertNotIn(snapshot_id, self.ids(self.vault_ec2.describe_snapshots()))
        self.assertNotIn(snapshot_id, self.ids(self.vault_ec2.describe_snapshots(OwnerIds=[ACCOUNT_A])))
        with self.assertRaises(ClientError) as caught:
            self.vault_ec2.copy_snapshot(SourceSnapshotId=snapshot_id, SourceRegion="us-east-1")
        self.assertEqual(caught.exception.response["Error"]["Code"], "InvalidSnapshot.NotFound")

    def test_removing_the_permission_hides_the_snapshot_again(self):
        snapshot_id = self.new_snapshot()["SnapshotId"]
        self.share(snapshot_id)
        self.ec2.modify_snapshot_attribute(
            SnapshotId=snapshot_id, Attribute="createVolumePermission",
            OperationType="remove", UserIds=[ACCOUNT_B],
        )
        with self.assertRaises(ClientError):
            self.vault_ec2.describe_snapshots(SnapshotIds=[snapshot_id])

    def test_shared_snapshot_is_regional(self):
        snapshot_id = self.new_snapshot()["SnapshotId"]
        self.share(snapshot_id)
        with self.assertRaises(ClientError):
            self.emulator.client("ec2", "eu-west-1", credentials=self.vault).describe_snapshots(
                SnapshotIds=[snapshot_id])


class SharedDBSnapshotsTest(EmulatorTestCase):
    """Manual RDS and Aurora snapshots shared through the ``restore``
    attribute, as the grantee account sees and copies them."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.rds = cls.emulator.client("rds")
        cls.vault = cls.emulator.credentials_of(ACCOUNT_B)
        cls.rds.create_db_instance(
            DBInstanceIdentifier="orders", DBInstanceClass="db.t3.micro", Engine="postgres",
            AllocatedStorage=20, MasterUsername="admin", MasterUserPassword="password-123")
        cls.rds.create_db_cluster(
            DBClusterIdentifier="ledger", Engine="aurora-postgresql",
            MasterUsername="admin", MasterUserPassword="password-123")

    def vault_rds(self, region="us-east-1"):
        return self.emulator.client("rds", region, credentials=self.vault)

    def db_snapshot(self, name, share=True):
        arn = self.rds.create_db_snapshot(
            DBInstanceIdentifier="orders", DBSnapshotIdentifier=name,
            Tags=[{"Key": "owner-only", "Value": "x"}])["DBSnapshot"]["DBSnapshotArn"]
        if share:
            self.rds.modify_db_snapshot_attribute(
                DBSnapshotIdentifier=name, AttributeName="restore", ValuesToAdd=[ACCOUNT_B])
        return arn

    def cluster_snapshot(self, name, share=True):
        arn = self.rds.create_db_cluster_snapshot(
            DBClusterIdentifier="ledger", DBClusterSnapshotIdentifier=name,
        )["DBClusterSnapshot"]["DBClusterSnapshotArn"]
        if share:
            self.rds.modify_db_cluster_snapshot_attribute(
                DBClusterSnapshotIdentifier=name, AttributeName="restore", ValuesToAdd=[ACCOUNT_B])
        return arn

    def shared_ids(self, rds=None, **params):
        rds = rds or self.vault_rds()
        return ({s["DBSnapshotIdentifier"] for s in rds.describe_db_snapshots(**params)["DBSnapshots"]},
                {s["DBClusterSnapshotIdentifier"]
                 for s in rds.describe_db_cluster_snapshots(**params)["DBClusterSnapshots"]})

    def assert_not_found(self, call, code):
        with self.assertRaises(ClientError) as caught:
            call()
        self.assertEqual(caught.exception.response["Error"]["Code"], code)

    def test_shared_snapshots_are_visible_to_the_grantee_by_arn(self):
        db_arn = self.db_snapshot("visible-db")
        cluster_arn = self.cluster_snapshot("visible-cluster")
        self.assertTrue(db_arn.startswith(f"arn:aws:rds:us-east-1:{ACCOUNT_A}:snapshot:"))
        for params in ({"IncludeShared": True}, {"SnapshotType": "shared"},
                       {"SnapshotType": "shared", "IncludeShared": True}):
            db_ids, cluster_ids = self.shared_ids(**params)
            self.assertIn(db_arn, db_ids, params)
            self.assertIn(cluster_arn, cluster_ids, params)
        shown = self.vault_rds().describe_db_snapshots(
            DBSnapshotIdentifier=db_arn, IncludeShared=True)["DBSnapshots"]
        self.assertEqual([(s["DBSnapshotIdentifier"], s["DBSnapshotArn"], s["SnapshotType"], s["TagList"])
                          for s in shown], [(db_arn, db_arn, "manual", [])])
        shown = self.vault_rds().describe_db_cluster_snapshots(
            DBClusterSnapshotIdentifier=cluster_arn, SnapshotType="shared")["DBClusterSnapshots"]
        self.assertEqual([s["DBClusterSnapshotArn"] for s in shown], [cluster_arn])
        # Not without IncludeShared, not as the grantee's own, not in another region.
        for params in ({}, {"SnapshotType": "manual", "IncludeShared": True}):
            db_ids, cluster_ids = self.shared_ids(**params)
            self.assertNotIn(db_arn, db_ids, params)
            self.assertNotIn(cluster_arn, cluster_ids, params)
        db_ids, cluster_ids = self.shared_ids(self.vault_rds("eu-west-1"), IncludeShared=True)
        self.assertFalse({db_arn, cluster_arn} & (db_ids | cluster_ids))
        # The owner still sees its snapshot under its own name.
        own = self.rds.describe_db_snapshots(DBSnapshotIdentifier="visible-db")["DBSnapshots"]
        self.assertEqual([s["DBSnapshotIdentifier"] for s in own], ["visible-db"])

    def test_public_snapshots_are_listed_with_include_public(self):
        arn = self.db_snapshot("public-db", share=False)
        self.rds.modify_db_snapshot_attribute(
            DBSnapshotIdentifier="public-db", AttributeName="restore", ValuesToAdd=["all"])
        self.assertIn(arn, self.shared_ids(IncludePublic=True)[0])
        self.assertIn(arn, self.shared_ids(SnapshotType="public")[0])
        self.assertNotIn(arn, self.shared_ids(IncludeShared=True)[0])
        copy = self.vault_rds().copy_db_snapshot(
            SourceDBSnapshotIdentifier=arn, TargetDBSnapshotIdentifier="from-public")["DBSnapshot"]
        self.assertIn(f":{ACCOUNT_B}:", copy["DBSnapshotArn"])

    def test_shared_snapshots_are_copyable_same_region_and_cross_region(self):
        db_arn = self.db_snapshot("copy-db")
        cluster_arn = self.cluster_snapshot("copy-cluster")
        for region in ("us-east-1", "eu-west-1"):
            rds = self.vault_rds(region)
            params = {"SourceRegion": "us-east-1"} if region != "us-east-1" else {}
            copy = rds.copy_db_snapshot(SourceDBSnapshotIdentifier=db_arn,
                                        TargetDBSnapshotIdentifier="vault-copy", **params)["DBSnapshot"]
            self.assertEqual(copy["DBSnapshotArn"], f"arn:aws:rds:{region}:{ACCOUNT_B}:snapshot:vault-copy")
            self.assertEqual((copy["DBInstanceIdentifier"], copy["AllocatedStorage"]), ("orders", 20))
            own = rds.describe_db_snapshots(DBSnapshotIdentifier="vault-copy")["DBSnapshots"]
            self.assertEqual([s["DBSnapshotArn"] for s in own], [copy["DBSnapshotArn"]])
            cluster_copy = rds.copy_db_cluster_snapshot(
                SourceDBClusterSnapshotIdentifier=cluster_arn,
                TargetDBClusterSnapshotIdentifier="vault-cluster-copy", **params)["DBClusterSnapshot"]
            self.assertEqual(cluster_copy["DBClusterSnapshotArn"],
                             f"arn:aws:rds:{region}:{ACCOUNT_B}:cluster-snapshot:vault-cluster-copy")
            self.assertEqual(
                [s["DBClusterSnapshotIdentifier"] for s in rds.describe_db_cluster_snapshots(
                    DBClusterSnapshotIdentifier="vault-cluster-copy")["DBClusterSnapshots"]],
                ["vault-cluster-copy"])
        # The copies belong to the vault: the sharer holds none.
        self.assert_not_found(lambda: self.rds.describe_db_snapshots(
            DBSnapshotIdentifier="vault-copy"), "DBSnapshotNotFound")
        self.assert_not_found(lambda: self.rds.describe_db_cluster_snapshots(
            DBClusterSnapshotIdentifier="vault-cluster-copy"), "DBClusterSnapshotNotFoundFault")

    def test_unshared_snapshots_are_not_found_by_another_account(self):
        db_arn = self.db_snapshot("private-db", share=False)
        cluster_arn = self.cluster_snapshot("private-cluster", share=False)
        db_ids, cluster_ids = self.shared_ids(IncludeShared=True)
        self.assertNotIn(db_arn, db_ids)
        self.assertNotIn(cluster_arn, cluster_ids)
        rds = self.vault_rds()
        self.assert_not_found(lambda: rds.describe_db_snapshots(
            DBSnapshotIdentifier=db_arn, IncludeShared=True), "DBSnapshotNotFound")
        self.assert_not_found(lambda: rds.copy_db_snapshot(
            SourceDBSnapshotIdentifier=db_arn, TargetDBSnapshotIdentifier="stolen"), "DBSnapshotNotFound")
        self.assert_not_found(lambda: rds.copy_db_cluster_snapshot(
            SourceDBClusterSnapshotIdentifier=cluster_arn, TargetDBClusterSnapshotIdentifier="stolen"),
            "DBClusterSnapshotNotFoundFault")
        self.assert_not_found(lambda: self.vault_rds("eu-west-1").copy_db_snapshot(
            SourceDBSnapshotIdentifier=db_arn, TargetDBSnapshotIdentifier="stolen",
            SourceRegion="us-east-1"), "DBSnapshotNotFound")

    def test_removing_the_account_hides_the_snapshot_again(self):
        db_arn = self.db_snapshot("unshared-db")
        cluster_arn = self.cluster_snapshot("unshared-cluster")
        self.rds.modify_db_snapshot_attribute(
            DBSnapshotIdentifier="unshared-db", AttributeName="restore", ValuesToRemove=[ACCOUNT_B])
        self.rds.modify_db_cluster_snapshot_attribute(
            DBClusterSnapshotIdentifier="unshared-cluster", AttributeName="restore",
            ValuesToRemove=[ACCOUNT_B])
        db_ids, cluster_ids = self.shared_ids(IncludeShared=True)
        self.assertNotIn(db_arn, db_ids)
        self.assertNotIn(cluster_arn, cluster_ids)
        self.assert_not_found(lambda: self.vault_rds().copy_db_snapshot(
            SourceDBSnapshotIdentifier=db_arn, TargetDBSnapshotIdentifier="too-late"), "DBSnapshotNotFound")
        self.assert_not_found(lambda: self.vault_rds().copy_db_cluster_snapshot(
            SourceDBClusterSnapshotIdentifier=cluster_arn, TargetDBClusterSnapshotIdentifier="too-late"),
            "DBClusterSnapshotNotFoundFault")


class ImagesTest(EmulatorTestCase):
    def test_register_image_honours_block_device_mappings(self):
        root = self.new_snapshot(size=10)["SnapshotId"]
        data = self.new_snapshot(size=30)["SnapshotId"]
        image_id = self.ec2.register_image(
            Name="restored-server", RootDeviceName="/dev/xvda", VirtualizationType="hvm",
            BlockDeviceMappings=[
                {"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": root, "VolumeSize": 16, "VolumeType": "gp3"}},
                {"DeviceName": "/dev/xvdf", "Ebs": {"SnapshotId": data, "DeleteOnTermination": False}},
            ],
        )["ImageId"]
        image = self.ec2.describe_images(ImageIds=[image_id])["Images"][0]
        self.assertEqual((image["RootDeviceName"], image["RootDeviceType"]), ("/dev/xvda", "ebs"))
        self.assertEqual(
            [(m["DeviceName"], m["Ebs"]["SnapshotId"], m["Ebs"]["VolumeSize"], m["Ebs"]["VolumeType"],
              m["Ebs"]["DeleteOnTermination"]) for m in image["BlockDeviceMappings"]],
            [("/dev/xvda", root, 16, "gp3", True), ("/dev/xvdf", data, 30, "gp2", False)],
        )
        with self.assertRaises(ClientError) as caught:
            self.ec2.delete_snapshot(SnapshotId=root)
        self.assertEqual(caught.exception.response["Error"]["Code"], "InvalidSnapshot.InUse")
        self.ec2.deregister_image(ImageId=image_id)
        self.ec2.delete_snapshot(SnapshotId=root)

    def test_register_image_with_unknown_snapshot_fails(self):
        with self.assertRaises(ClientError) as caught:
            self.ec2.register_image(Name="broken-image", RootDeviceName="/dev/xvda", BlockDeviceMappings=[
                {"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": "snap-0123456789abcdef0"}}])
        self.assertEqual(caught.exception.response["Error"]["Code"], "InvalidSnapshot.NotFound")

    def create_server_image(self):
        instance_id = self.ec2.run_instances(
            ImageId="ami-12345678", MinCount=1, MaxCount=1, Placement={"AvailabilityZone": "us-east-1a"},
        )["Instances"][0]["InstanceId"]
        data_volume = self.ec2.create_volume(Size=20, AvailabilityZone="us-east-1a", VolumeType="gp3")["VolumeId"]
        self.ec2.attach_volume(VolumeId=data_volume, InstanceId=instance_id, Device="/dev/sdf")
        image_id = self.ec2.create_image(
            InstanceId=instance_id, Name="server-backup",
            TagSpecifications=[{"ResourceType": "image", "Tags": [{"Key": "safehold:backup", "Value": "b-1"}]},
                               {"ResourceType": "snapshot", "Tags": [{"Key": "safehold:backup", "Value": "b-1"}]}],
        )["ImageId"]
        return instance_id, data_volume, image_id

    def test_create_image_snapshots_every_attached_volume(self):
        instance_id, data_volume, image_id = self.create_server_image()
        volumes = {v["Attachments"][0]["Device"]: v for v in self.ec2.describe_volumes(
            Filters=[{"Name": "attachment.instance-id", "Values": [instance_id]}])["Volumes"]}
        self.assertEqual(volumes["/dev/sdf"]["VolumeId"], data_volume)
        image = self.ec2.describe_images(ImageIds=[image_id])["Images"][0]
        mappings = {m["DeviceName"]: m["Ebs"] for m in image["BlockDeviceMappings"]}
        self.assertEqual(sorted(mappings), ["/dev/sda1", "/dev/sdf"])
        self.assertEqual(image["RootDeviceName"], "/dev/sda1")
        for device, ebs in mappings.items():
            volume = volumes[device]
            self.assertEqual(ebs["VolumeSize"], volume["Size"])
            snapshot = self.ec2.describe_snapshots(SnapshotIds=[ebs["SnapshotId"]])["Snapshots"][0]
            self.assertEqual(snapshot["Description"],
                             f"Created by CreateImage({instance_id}) for {image_id} from {volume['VolumeId']}")
            self.assertEqual((snapshot["VolumeId"], snapshot["VolumeSize"]), (volume["VolumeId"], volume["Size"]))
            self.assertIn({"Key": "safehold:backup", "Value": "b-1"}, snapshot["Tags"])
        self.assertEqual(mappings["/dev/sdf"]["VolumeType"], "gp3")
        self.assertIn({"Key": "safehold:backup", "Value": "b-1"}, image["Tags"])
        image_snapshots = self.ec2.describe_snapshots(
            Filters=[{"Name": "description", "Values": [f"*{image_id}*"]}])["Snapshots"]
        self.assertEqual(len(image_snapshots), 2)

    def test_copy_image_copies_every_snapshot(self):
        _, _, image_id = self.create_server_image()
        source = self.ec2.describe_images(ImageIds=[image_id])["Images"][0]
        west = self.emulator.client("ec2", "us-west-2")
        copy_id = west.copy_image(SourceImageId=image_id, SourceRegion="us-east-1", Name="server-dr")["ImageId"]
        copy = west.describe_images(ImageIds=[copy_id])["Images"][0]
        self.assertEqual(
            [(m["DeviceName"], m["Ebs"]["VolumeSize"]) for m in copy["BlockDeviceMappings"]],
            [(m["DeviceName"], m["Ebs"]["VolumeSize"]) for m in source["BlockDeviceMappings"]],
        )
        copied_ids = [m["Ebs"]["SnapshotId"] for m in copy["BlockDeviceMappings"]]
        self.assertEqual(len(west.describe_snapshots(SnapshotIds=copied_ids)["Snapshots"]), 2)
        self.assertFalse(set(copied_ids) & {m["Ebs"]["SnapshotId"] for m in source["BlockDeviceMappings"]})


    def test_copy_image_encrypts_every_copied_snapshot_with_the_given_key(self):
        _, _, image_id = self.create_server_image()
        west = self.emulator.client("ec2", "us-west-2")
        key = self.emulator.client("kms", "us-west-2").create_key()["KeyMetadata"]["Arn"]
        copy_id = west.copy_image(SourceImageId=image_id, SourceRegion="us-east-1", Name="server-dr-enc",
                                  Encrypted=True, KmsKeyId=key)["ImageId"]
        copy = west.describe_images(ImageIds=[copy_id])["Images"][0]
        copied_ids = [m["Ebs"]["SnapshotId"] for m in copy["BlockDeviceMappings"]]
        snapshots = west.describe_snapshots(SnapshotIds=copied_ids)["Snapshots"]
        self.assertEqual([(s["Encrypted"], s["KmsKeyId"]) for s in snapshots], [(True, key)] * 2)
        plain_id = west.copy_image(SourceImageId=image_id, SourceRegion="us-east-1",
                                   Name="server-dr-plain")["ImageId"]
        plain = west.describe_images(ImageIds=[plain_id])["Images"][0]
        plain_ids = [m["Ebs"]["SnapshotId"] for m in plain["BlockDeviceMappings"]]
        self.assertFalse(any(s["Encrypted"] for s in west.describe_snapshots(SnapshotIds=plain_ids)["Snapshots"]))


class RecoveryLaunchTest(EmulatorTestCase):
    """Patches j, k and l: what a recovery from snapshots relies on."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.vault = cls.emulator.credentials_of(ACCOUNT_B)
        cls.vault_ec2 = cls.emulator.client("ec2", credentials=cls.vault)

    def register(self, ec2, root, data=None, **extra):
        mappings = [{"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": root}}]
        if data:
            mappings.append({"DeviceName": "/dev/sdf", "Ebs": {
                "SnapshotId": data, "VolumeType": "io1", "Iops": 300, "DeleteOnTermination": False}})
        return ec2.register_image(Name=f"recovered-{root}", RootDeviceName="/dev/xvda",
                                  VirtualizationType="hvm", BlockDeviceMappings=mappings, **extra)["ImageId"]

    def volumes_of(self, ec2, instance_id):
        volumes = ec2.describe_volumes(
            Filters=[{"Name": "attachment.instance-id", "Values": [instance_id]}])["Volumes"]
        return {v["Attachments"][0]["Device"]: v for v in volumes}

    def test_register_image_keeps_architecture_and_tags(self):
        root = self.new_snapshot()["SnapshotId"]
        image_id = self.register(self.ec2, root, Architecture="arm64", TagSpecifications=[
            {"ResourceType": "image", "Tags": [{"Key": "safehold:recovery", "Value": "r-1"}]}])
        image = self.ec2.describe_images(ImageIds=[image_id])["Images"][0]
        self.assertEqual(image["Architecture"], "arm64")
        self.assertEqual(image["Tags"], [{"Key": "safehold:recovery", "Value": "r-1"}])

    def test_run_instances_creates_the_image_volumes_and_the_requested_ones(self):
        root = self.new_snapshot(size=10)["SnapshotId"]
        data = self.new_snapshot(size=30)["SnapshotId"]
        extra = self.new_snapshot(size=5)["SnapshotId"]
        image_id = self.register(self.ec2, root, data)
        instance = self.ec2.run_instances(
            ImageId=image_id, MinCount=1, MaxCount=1, DisableApiTermination=True,
            Placement={"AvailabilityZone": "us-east-1b"},
            BlockDeviceMappings=[
                {"DeviceName": "/dev/xvda", "Ebs": {"VolumeSize": 12}},
                {"DeviceName": "/dev/sdg", "Ebs": {"SnapshotId": extra, "VolumeType": "io2", "Iops": 1000,
                                                   "DeleteOnTermination": True}},
            ],
            TagSpecifications=[{"ResourceType": "volume", "Tags": [{"Key": "team", "Value": "db"}]}],
        )["Instances"][0]
        volumes = self.volumes_of(self.ec2, instance["InstanceId"])
        self.assertEqual(sorted(volumes), ["/dev/sdf", "/dev/sdg", "/dev/xvda"])
        described = self.ec2.describe_instances(InstanceIds=[instance["InstanceId"]])
        delete_on_termination = {m["DeviceName"]: m["Ebs"]["DeleteOnTermination"] for m in
                                 described["Reservations"][0]["Instances"][0]["BlockDeviceMappings"]}
        shape = {d: (v["SnapshotId"], v["Size"], v["VolumeType"], v.get("Iops"), v["AvailabilityZone"],
                     delete_on_termination[d]) for d, v in volumes.items()}
        self.assertEqual(shape["/dev/xvda"][:3], (root, 12, "gp2"))
        self.assertEqual(shape["/dev/sdf"], (data, 30, "io1", 300, "us-east-1b", False))
        self.assertEqual(shape["/dev/sdg"], (extra, 5, "io2", 1000, "us-east-1b", True))
        for volume in volumes.values():
            self.assertIn({"Key": "team", "Value": "db"}, volume["Tags"])
        attribute = self.ec2.describe_instance_attribute(
            InstanceId=instance["InstanceId"], Attribute="disableApiTermination")
        self.assertTrue(attribute["DisableApiTermination"]["Value"])

    def test_no_device_drops_an_image_mapping(self):
        image_id = self.register(self.ec2, self.new_snapshot()["SnapshotId"], self.new_snapshot()["SnapshotId"])
        instance_id = self.ec2.run_instances(
            ImageId=image_id, MinCount=1, MaxCount=1,
            BlockDeviceMappings=[{"DeviceName": "/dev/sdf", "NoDevice": ""}])["Instances"][0]["InstanceId"]
        self.assertEqual(sorted(self.volumes_of(self.ec2, instance_id)), ["/dev/xvda"])

    def share(self, snapshot_id):
        self.ec2.modify_snapshot_attribute(
            SnapshotId=snapshot_id, Attribute="createVolumePermission",
            OperationType="add", UserIds=[ACCOUNT_B])

    def test_grantee_creates_volumes_and_images_from_a_shared_snapshot(self):
        snapshot_id = self.new_snapshot(size=9)["SnapshotId"]
        with self.assertRaises(ClientError) as caught:
            self.vault_ec2.create_volume(SnapshotId=snapshot_id, AvailabilityZone="us-east-1a")
        self.assertEqual(caught.exception.response["Error"]["Code"], "InvalidSnapshot.NotFound")
        self.share(snapshot_id)
        volume = self.vault_ec2.create_volume(SnapshotId=snapshot_id, AvailabilityZone="us-east-1a")
        self.assertEqual((volume["Size"], volume["SnapshotId"]), (9, snapshot_id))
        image_id = self.register(self.vault_ec2, snapshot_id)
        instance_id = self.vault_ec2.run_instances(
            ImageId=image_id, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
        root = self.volumes_of(self.vault_ec2, instance_id)["/dev/xvda"]
        self.assertEqual((root["SnapshotId"], root["Size"]), (snapshot_id, 9))
        # The owner's snapshot is untouched and still the owner's.
        self.assertEqual(self.ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0]["OwnerId"],
                         ACCOUNT_A)


if __name__ == "__main__":
    unittest.main()
