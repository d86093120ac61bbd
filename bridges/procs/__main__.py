from bridges.procs.process import main

main()
