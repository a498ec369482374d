"""The one-run stack benchmark (`flowblending-accel bench`)."""
