   FROM   busybox   
		RUN	true	


   
