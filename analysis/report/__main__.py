from analysis.report.stage import main

main()
