"""Device memory of an edit: a plan from the configs (`edit_plan`), and a live-storage measurement on the
meta device to check it against (`live`, `measure`)."""
