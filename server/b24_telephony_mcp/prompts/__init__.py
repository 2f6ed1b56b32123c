"""Prompt declarations: the everyday jobs as prompts, their arguments and what completes them.

Above the tool declarations, whose names the texts use and whose offer decides which prompts are listed; below
serving, which turns them into prompts/list, prompts/get and completion/complete.
"""
