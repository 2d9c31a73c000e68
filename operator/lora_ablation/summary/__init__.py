"""The analysis: leaderboard, intervals, Pareto front, recommendation, two stages and cost, rendered as text,
Markdown and plots. Pure."""
