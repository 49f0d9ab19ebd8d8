from pipeline.dump.stage import main

main()
