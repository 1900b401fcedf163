"""The brokers of split queues (RabbitMQ, Kafka): one plug-in per broker type behind
`broker.Broker`, and the keeper loop that runs them in the cluster."""
