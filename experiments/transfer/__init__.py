"""Independent data made another way, to check that mini results transfer."""
