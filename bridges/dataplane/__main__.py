from bridges.dataplane.process import main

main()
