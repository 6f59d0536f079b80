"""The local AWS Lambda emulator behind `fnpack run ARCHIVE --as lambda` (moved from `fnpack.lambda_local`)."""
