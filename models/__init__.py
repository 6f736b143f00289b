"""Online River learners. Pure: they know nothing of Kafka or Faust."""
