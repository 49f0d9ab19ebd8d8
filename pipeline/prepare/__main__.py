from pipeline.prepare.stage import main

main()
