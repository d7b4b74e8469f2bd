from rexport.cli import main

main()
