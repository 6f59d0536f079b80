"""The aws-lambda target: deploys with boto3 (target, deploy, settings, history, errors) and the local emulator
that runs an archive as Lambda would (`fnpack run --as lambda`)."""
