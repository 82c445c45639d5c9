//! Integration tests against the real RabbitMQ and S3 (see scripts/test.sh).
