"""Settings read and checked from the environment and the chosen profile (`settings`), and the REST client and
stores built from them (`wiring`). Below serving, above the tool declarations."""
