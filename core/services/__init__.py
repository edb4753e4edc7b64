"""What the app and the CLI share: workspaces and their config, subsets, cohorts, the run queue and server state, expected times and hosted caps, preparing a hosted server, the workshop, reports."""
