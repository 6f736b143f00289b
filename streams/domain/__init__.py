"""Pure domain logic: no Kafka, no Faust, no wall clock. Time is always an argument."""
