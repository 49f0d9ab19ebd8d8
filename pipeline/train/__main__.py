from pipeline.train.stage import main

main()
