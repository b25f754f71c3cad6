from bridge_common.migrate import main

main()
