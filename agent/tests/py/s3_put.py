"""Uploads objects to an S3-compatible endpoint with boto3 (the AWS SDK for Python), as a
producer of usage files would: s3_put.py ENDPOINT BUCKET KEY=FILE... (creates the bucket)."""
import sys

import boto3

endpoint, bucket, *pairs = sys.argv[1:]
s3 = boto3.client(
    "s3",
    endpoint_url=endpoint,
    region_name="us-east-1",
    aws_access_key_id="test",
    aws_secret_access_key="test",
)
try:
    s3.create_bucket(Bucket=bucket)
except s3.exceptions.BucketAlreadyOwnedByYou:
    pass
for pair in pairs:
    key, path = pair.split("=", 1)
    with open(path, "rb") as f:
        s3.put_object(Bucket=bucket, Key=key, Body=f.read())
print(len(pairs))
