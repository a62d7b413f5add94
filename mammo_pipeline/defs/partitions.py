"""One partition per hospital source; keys are the hospital folder slugs under landing/."""

import dagster as dg

hospital_partitions = dg.DynamicPartitionsDefinition(name="hospital")
