"""Fills a bucket of an S3-compatible server with a local folder, with boto3 (the client the
object-store tests check corenet's reader against).

    s3_fill.py ENDPOINT BUCKET FOLDER [PREFIX]

Creates BUCKET when missing and uploads every file under FOLDER as PREFIX/relative/path.
Credentials come from the environment, as any AWS client's do.
"""
import pathlib
import sys

import boto3


def main() -> None:
    endpoint, bucket, folder = sys.argv[1:4]
    prefix = sys.argv[4].strip("/") + "/" if len(sys.argv) > 4 and sys.argv[4] else ""
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    if bucket not in [b["Name"] for b in s3.list_buckets().get("Buckets", [])]:
        s3.create_bucket(Bucket=bucket)
    root = pathlib.Path(folder)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        s3.upload_file(str(path), bucket, prefix + path.relative_to(root).as_posix())


if __name__ == "__main__":
    main()
